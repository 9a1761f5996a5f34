"""Workloads: what each client process does, over SQL through `sixfold.connect`.

A workload makes ops (f, value) from a seeded random source, runs one on a connection
and says what happened: ("ok", value) | ("fail", value) | ("info", value). Which one is
decided by where an error struck: before COMMIT nothing was committed (the session rolls
back), so "fail"; at COMMIT, or a lost connection there, the outcome is unknown, so
"info" (possibly applied). A read-only op that errs is "fail": it changed nothing.
"""

from __future__ import annotations

import random
import threading

from sixfold import dbapi


class Unknown(Exception):
    """The op may or may not have taken effect."""


def run_txn(conn: dbapi.Connection, body) -> object:
    """body(cursor) inside BEGIN .. COMMIT. Errors before COMMIT propagate (nothing applied);
    an error at COMMIT becomes Unknown."""
    cur = conn.cursor()
    try:
        result = body(cur)
    except BaseException:
        try:
            conn.rollback()
        except dbapi.Error:
            pass
        raise
    try:
        conn.commit()
    except dbapi.Error as exc:
        raise Unknown(f"{type(exc).__name__}: {exc}") from None
    return result


class Workload:
    name = ""
    reads_from_reader = False     # some ops go to the reader endpoint

    def __init__(self, table_suffix: str, rng: random.Random) -> None:
        self.suffix = table_suffix
        self.rng = rng
        self.lock = threading.Lock()   # generators are shared by the client threads

    def setup(self, conn: dbapi.Connection) -> None:
        raise NotImplementedError

    def next_op(self) -> tuple[str, object]:
        raise NotImplementedError

    def endpoint_for(self, f: str, value) -> str:
        return "writer"

    def is_read_only(self, f: str, value) -> bool:
        raise NotImplementedError

    def apply(self, conn: dbapi.Connection, f: str, value) -> tuple[str, object]:
        raise NotImplementedError

    def final_read(self, conn: dbapi.Connection) -> dict:
        raise NotImplementedError

    def check(self, ops: list[dict], final: dict) -> dict:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"workload": self.name}


# ---------------------------------------------------------------- list-append


class ListAppend(Workload):
    """Transactions of 1-4 appends to and reads of lists kept in rows (one row per key, the
    list as comma-separated integers). Keys retire after APPENDS_PER_KEY appends, so lists
    stay short and version orders are cheap to infer."""

    name = "list-append"
    ACTIVE_KEYS = 6
    APPENDS_PER_KEY = 40

    def __init__(self, table_suffix: str, rng: random.Random) -> None:
        super().__init__(table_suffix, rng)
        self.table = f"chaos_la_{table_suffix}"
        self.next_key = self.ACTIVE_KEYS
        self.active = list(range(self.ACTIVE_KEYS))
        self.appends: dict[int, int] = {}
        self.next_value = 1

    def setup(self, conn):
        conn.execute(f"CREATE TABLE IF NOT EXISTS {self.table}(k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        conn.commit()

    def next_op(self):
        with self.lock:
            mops = []
            for _ in range(self.rng.randint(1, 4)):
                k = self.rng.choice(self.active)
                if self.rng.random() < 0.5:
                    mops.append(["append", k, self.next_value])
                    self.next_value += 1
                    self.appends[k] = self.appends.get(k, 0) + 1
                    if self.appends[k] >= self.APPENDS_PER_KEY and k in self.active:
                        self.active[self.active.index(k)] = self.next_key
                        self.next_key += 1
                else:
                    mops.append(["r", k, None])
            return "txn", mops

    def is_read_only(self, f, value):
        return all(m[0] == "r" for m in value)

    def apply(self, conn, f, value):
        def body(cur):
            done = []
            for op, k, v in value:
                if op == "r":
                    row = cur.execute(f"SELECT v FROM {self.table} WHERE k = ?", (k,)).fetchone()
                    done.append(["r", k, _parse(row[0]) if row else []])
                else:
                    cur.execute(f"INSERT INTO {self.table}(k, v) VALUES (?, ?) "
                                f"ON CONFLICT(k) DO UPDATE SET v = v || ',' || excluded.v", (k, str(v)))
                    done.append(["append", k, v])
            return done
        return "ok", run_txn(conn, body)

    def final_read(self, conn):
        rows = conn.execute(f"SELECT k, v FROM {self.table}").fetchall()
        conn.commit()
        return {"lists": {str(k): _parse(v) for k, v in rows}}

    def check(self, ops, final):
        from sixfold.chaos.checkers import listappend

        lists = {int(k): v for k, v in final["lists"].items()}
        touched = {m[1] for op in ops if op["f"] == "txn" and op["type"] == "invoke" for m in op["value"]}
        return listappend.check(ops, final_reads={k: lists.get(k, []) for k in touched})


def _parse(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


# ---------------------------------------------------------------- bank


class Bank(Workload):
    """Transfers between ACCOUNTS accounts (no overdrafts) and reads of every balance; half
    the reads go to the reader endpoint. Every read must sum to TOTAL."""

    name = "bank"
    reads_from_reader = True
    ACCOUNTS = 5
    TOTAL = 100

    def __init__(self, table_suffix: str, rng: random.Random) -> None:
        super().__init__(table_suffix, rng)
        self.table = f"chaos_bank_{table_suffix}"
        self._read_count = 0

    def setup(self, conn):
        conn.execute(f"CREATE TABLE IF NOT EXISTS {self.table}(id INTEGER PRIMARY KEY, "
                     "balance INTEGER NOT NULL)")
        if not conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]:
            each = self.TOTAL // self.ACCOUNTS
            for a in range(self.ACCOUNTS):
                conn.execute(f"INSERT INTO {self.table}(id, balance) VALUES (?, ?)",
                             (a, each + (self.TOTAL - each * self.ACCOUNTS if a == 0 else 0)))
        conn.commit()

    def next_op(self):
        with self.lock:
            if self.rng.random() < 0.4:
                self._read_count += 1
                return "read", {"endpoint": "reader" if self._read_count % 2 else "writer"}
            a, b = self.rng.sample(range(self.ACCOUNTS), 2)
            return "transfer", {"from": a, "to": b, "amount": self.rng.randint(1, 5)}

    def endpoint_for(self, f, value=None):
        return (value or {}).get("endpoint", "writer") if f == "read" else "writer"

    def is_read_only(self, f, value):
        return f == "read"

    def apply(self, conn, f, value):
        if f == "read":
            rows = conn.execute(f"SELECT id, balance FROM {self.table}").fetchall()
            conn.commit()
            return "ok", {str(a): b for a, b in rows}

        def body(cur):
            have = cur.execute(f"SELECT balance FROM {self.table} WHERE id = ?", (value["from"],)).fetchone()[0]
            if have < value["amount"]:
                return False
            cur.execute(f"UPDATE {self.table} SET balance = balance - ? WHERE id = ?", (value["amount"], value["from"]))
            cur.execute(f"UPDATE {self.table} SET balance = balance + ? WHERE id = ?", (value["amount"], value["to"]))
            return True
        return ("ok" if run_txn(conn, body) else "fail"), value

    def final_read(self, conn):
        rows = conn.execute(f"SELECT id, balance FROM {self.table}").fetchall()
        conn.commit()
        return {"balances": {str(a): b for a, b in rows}}

    def check(self, ops, final):
        from sixfold.chaos.checkers import bank

        return bank.check(ops, total=self.TOTAL, accounts=list(range(self.ACCOUNTS)), allow_negative=False,
                          final_read=final["balances"])

    def describe(self):
        return {"workload": self.name, "accounts": self.ACCOUNTS, "total": self.TOTAL}


# ---------------------------------------------------------------- register


class Register(Workload):
    """Single-key registers: read, write (unique values), compare-and-set; keys retire after
    OPS_PER_KEY ops so each key's linearizability search stays small."""

    name = "register"
    ACTIVE_KEYS = 4
    OPS_PER_KEY = 60

    def __init__(self, table_suffix: str, rng: random.Random) -> None:
        super().__init__(table_suffix, rng)
        self.table = f"chaos_reg_{table_suffix}"
        self.active = list(range(self.ACTIVE_KEYS))
        self.next_key = self.ACTIVE_KEYS
        self.ops_on: dict[int, int] = {}
        self.next_value = 1

    def setup(self, conn):
        conn.execute(f"CREATE TABLE IF NOT EXISTS {self.table}(k INTEGER PRIMARY KEY, v INTEGER)")
        conn.commit()

    def next_op(self):
        with self.lock:
            k = self.rng.choice(self.active)
            self.ops_on[k] = self.ops_on.get(k, 0) + 1
            if self.ops_on[k] >= self.OPS_PER_KEY:
                self.active[self.active.index(k)] = self.next_key
                self.next_key += 1
            roll = self.rng.random()
            if roll < 0.5:
                return "read", [k, None]
            v = self.next_value
            self.next_value += 1
            if roll < 0.8:
                return "write", [k, v]
            return "cas", [k, [self.rng.randint(max(1, v - 5), v - 1) if v > 1 else None, v]]

    def is_read_only(self, f, value):
        return f == "read"

    def apply(self, conn, f, value):
        k = value[0]
        if f == "read":
            row = conn.execute(f"SELECT v FROM {self.table} WHERE k = ?", (k,)).fetchone()
            conn.commit()
            return "ok", [k, row[0] if row else None]
        if f == "write":
            run_txn(conn, lambda cur: cur.execute(
                f"INSERT INTO {self.table}(k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                (k, value[1])))
            return "ok", value
        old, new = value[1]
        changed = run_txn(conn, lambda cur: cur.execute(
            f"UPDATE {self.table} SET v = ? WHERE k = ? AND v IS ?", (new, k, old)).rowcount)
        return ("ok" if changed == 1 else "fail"), value

    def final_read(self, conn):
        rows = conn.execute(f"SELECT k, v FROM {self.table}").fetchall()
        conn.commit()
        return {"registers": {str(k): v for k, v in rows}}

    def check(self, ops, final):
        from sixfold.chaos.checkers import register

        # the final read is one more read of every key, after everything else returned
        end_ns = max((op["time_ns"] for op in ops), default=0) + 1
        extra = []
        keys = {op["value"][0] for op in ops if op["f"] in ("read", "write", "cas") and op["type"] == "invoke"}
        for i, k in enumerate(sorted(keys)):
            v = final["registers"].get(str(k))
            extra += [{"index": -1, "type": "invoke", "f": "read", "process": f"final-{i}", "time_ns": end_ns,
                       "value": [k, None]},
                      {"index": -1, "type": "ok", "f": "read", "process": f"final-{i}", "time_ns": end_ns + 1,
                       "value": [k, v]}]
        return register.check(list(ops) + extra)


WORKLOADS = {w.name: w for w in (ListAppend, Bank, Register)}
