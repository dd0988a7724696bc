#!/usr/bin/env python3
"""Checks the ClickHouse DDL and the analyst queries on a modern engine and on a live server.

Default: modern ClickHouse in-process (PyPI `chdb-core`, imported as `chdb`) in a fresh session under a
temporary folder. Every migration of schemas/migrations/ is applied in order, `*.modern.sql` included.

`--server URL`: a live ClickHouse over HTTP (urllib only), in a fresh database `chk_<random>` that is
dropped at the end, or kept (and named) when the run failed. `*.modern.sql` migrations are applied only
when the server's major version is >= 21, like schemas/src/migrate.rs does.

Both ways: sample rows are inserted into events_raw and dead_letters, every query of
docs/analyst-queries.sql is run (each must succeed and return rows), and several results are compared
with values computed here from the sample rows. One line `ok <name>` per statement; on failure the
failing statement is named and the exit status is 1.
"""

import argparse
import datetime as dt
import os
import re
import secrets
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIGRATIONS_DIR = os.path.join(ROOT, "schemas", "migrations")
QUERIES_FILE = os.path.join(ROOT, "docs", "analyst-queries.sql")
MODERN_MAJOR = 21  # schemas/src/migrate.rs: MODERN_MAJOR


class CheckFailed(Exception):
    """A statement, query or assertion failed; the message names it."""


class EngineError(Exception):
    """The engine rejected a statement."""


# ---------------------------------------------------------------------------------------------------
# Statement splitting, exactly like schemas/src/migrate.rs `split_statements`
# ---------------------------------------------------------------------------------------------------


def rust_lines(text):
    """str::lines(): split at \\n, drop one trailing \\r per line, no final empty line."""
    parts = text.split("\n")
    if parts and parts[-1] == "":
        parts.pop()
    return [p[:-1] if p.endswith("\r") else p for p in parts]


def split_statements(sql):
    """Statements at `;` line ends, `--` comment lines dropped (as migrate.rs does)."""
    text = "".join(line + "\n" for line in rust_lines(sql) if not line.lstrip().startswith("--"))
    return [s.strip() for s in text.split(";\n") if s.strip()]


NAME_RE = re.compile(r"^--\s*name:\s*(\S+)\s*$")
SNAKE_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def parse_named_queries(path):
    """[(name, description, sql)] from the `-- name:` / `-- description` / statement layout."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = rust_lines(text)
    named = []  # (name, description, line number)
    for i, line in enumerate(lines):
        m = NAME_RE.match(line.strip())
        if not m:
            continue
        name = m.group(1)
        desc = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if not desc.startswith("--") or NAME_RE.match(desc) or not desc[2:].strip():
            raise CheckFailed(f"{path}:{i + 2}: query {name!r} needs a one-line `-- description` after its name")
        named.append((name, desc[2:].strip(), i + 1))
    statements = split_statements(text)
    # Attribute each statement to the name line before it: statement k starts after name k.
    if len(named) != len(statements):
        raise CheckFailed(
            f"{path}: {len(statements)} statements but {len(named)} `-- name:` lines "
            "(each query needs exactly one name line and must end with `;` at the end of a line)"
        )
    # Order check: the k-th name line must come before the k-th statement's first line and after the
    # (k-1)-th statement's end. Walk the non-comment lines to find where each statement ends.
    ends = []
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("--") and line.endswith(";"):
            ends.append(i + 1)
    prev_end = 0
    for k, (name, _, at) in enumerate(named):
        if not prev_end < at < (ends[k] if k < len(ends) else 10**9):
            raise CheckFailed(f"{path}:{at}: name line {name!r} is not directly before its query")
        prev_end = ends[k] if k < len(ends) else prev_end
    names = [n for n, _, _ in named]
    for n in names:
        if not SNAKE_RE.match(n):
            raise CheckFailed(f"{path}: query name {n!r} is not snake_case")
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise CheckFailed(f"{path}: duplicate query names {dups}")
    return [(n, d, s) for (n, d, _), s in zip(named, statements)]


def migration_files():
    files = sorted(f for f in os.listdir(MIGRATIONS_DIR) if f.endswith(".sql"))
    if not files:
        raise CheckFailed(f"no migrations in {MIGRATIONS_DIR}")
    return files


# ---------------------------------------------------------------------------------------------------
# Engines: both return TabSeparated text
# ---------------------------------------------------------------------------------------------------


class ChdbEngine:
    label = "chdb"

    def __init__(self):
        os.environ.setdefault("TZ", "UTC")
        try:
            from chdb import session  # noqa: PLC0415 (import only in this mode)
        except ImportError as e:
            raise CheckFailed(f"cannot import chdb ({e}); install it: pip install chdb-core") from e
        self.path = tempfile.mkdtemp(prefix="chk_chdb_")
        self.session = session.Session(self.path)
        self.where = f"chdb session {self.path}"

    def version(self):
        return self.query("SELECT version()").strip()

    def query(self, sql):
        try:
            res = self.session.query(sql, "TabSeparated")
        except Exception as e:  # chdb raises ChdbError / RuntimeError
            raise EngineError(str(e).strip()) from e
        return res.bytes().decode("utf-8") if hasattr(res, "bytes") else str(res)

    def close(self, keep):
        try:
            self.session.close()
        except Exception:  # noqa: BLE001 (best effort)
            pass
        if keep:
            print(f"kept the chdb data folder {self.path}")
        else:
            shutil.rmtree(self.path, ignore_errors=True)


class HttpEngine:
    label = "server"

    def __init__(self, url):
        self.url = url.rstrip("/") + "/"
        self.database = None
        self.where = self.url

    def _post(self, sql, database):
        params = {}
        if database:
            params["database"] = database
        url = self.url + ("?" + urllib.parse.urlencode(params) if params else "")
        req = urllib.request.Request(url, data=sql.encode("utf-8"), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.read().decode("utf-8")
        except urllib.error.HTTPError as e:
            raise EngineError(e.read().decode("utf-8", "replace").strip() or str(e)) from e
        except urllib.error.URLError as e:
            raise EngineError(f"cannot reach {self.url}: {e.reason}") from e

    def version(self):
        return self._post("SELECT version()", None).strip()

    def create_database(self):
        self.database = "chk_" + secrets.token_hex(6)
        self._post(f"CREATE DATABASE {self.database}", None)
        self.where = f"{self.url} database {self.database}"

    def query(self, sql):
        return self._post(sql, self.database)

    def close(self, keep):
        if not self.database:
            return
        if keep:
            print(f"kept the database {self.database} on {self.url} for inspection")
            return
        try:
            self._post(f"DROP DATABASE IF EXISTS {self.database}", None)
        except EngineError as e:
            print(f"warning: could not drop {self.database}: {e}", file=sys.stderr)


def parse_tsv(text):
    def unescape(cell):
        if "\\" not in cell:
            return cell
        out, i = [], 0
        table = {"t": "\t", "n": "\n", "\\": "\\", "'": "'", "0": "\0", "r": "\r", "b": "\b", "f": "\f"}
        while i < len(cell):
            c = cell[i]
            if c == "\\" and i + 1 < len(cell):
                out.append(table.get(cell[i + 1], cell[i + 1]))
                i += 2
            else:
                out.append(c)
                i += 1
        return "".join(out)

    return [[unescape(c) for c in line.split("\t")] for line in text.split("\n") if line != ""]


# ---------------------------------------------------------------------------------------------------
# Sample data and the values expected from it
# ---------------------------------------------------------------------------------------------------

EVENT_COLUMNS = (
    "tenant, customer, meter, endpoint, id, source, time, received_at, quantity, unique_key, data, "
    "kafka_topic, kafka_partition, kafka_offset"
)
DEAD_COLUMNS = (
    "tenant, received_at, stage, reason_code, reason, event_id, payload, kafka_topic, kafka_partition, kafka_offset"
)


def fmt_time(t):
    return t.strftime("%Y-%m-%d %H:%M:%S")


def lit(v):
    if isinstance(v, str):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(v, dt.datetime):
        return "'" + fmt_time(v) + "'"
    return repr(v)


class Sample:
    def __init__(self):
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0, tzinfo=None)
        self.now = now
        self.midnight = now.replace(hour=0, minute=0, second=0)
        self.early = max(self.midnight, now - dt.timedelta(hours=1))  # earlier today
        self.old = self.midnight - dt.timedelta(days=45)  # a previous month, outside the last 30 days
        self.month_start = self.midnight.replace(day=1)
        n, e, m, o = self.now, self.early, self.midnight, self.old
        # (tenant, customer, meter, endpoint, source, time, lag seconds, quantity, unique_key)
        batch_a = [
            ("acme", "cust_1", "api_call", "/v1/search", "sdk", n, 2, 1.0, ""),
            ("acme", "cust_1", "api_call", "/v1/search", "sdk", e, 5, 2.0, ""),
            ("acme", "cust_1", "api_call", "/v1/orders", "http", m, 30, 1.0, ""),
            ("acme", "cust_2", "api_call", "/v1/search", "http", n, 1, 3.0, ""),
            ("other", "cust_1", "api_call", "/v1/search", "sdk", n, 1, 50.0, ""),
        ]
        # A second insert: same rollup keys again, so the Summing/Aggregating tables hold several
        # unmerged rows per key (the queries must re-aggregate them).
        batch_b = [
            ("acme", "cust_1", "api_call", "/v1/search", "sdk", n, 3, 4.0, ""),
            ("acme", "cust_1", "active_users", "/v1/login", "sdk", e, 1, 1.0, "user_a"),
            ("acme", "cust_1", "active_users", "/v1/login", "sdk", n, 1, 1.0, "user_b"),
            ("acme", "cust_1", "active_users", "/v1/login", "sdk", n, 1, 7.0, "user_a"),
            ("acme", "cust_1", "api_call", "/v1/orders", "batch", o, 60, 10.0, ""),
        ] + [("acme", "cust_heavy", "api_call", "/v1/search", "loadgen", m, 4, 10.0, "")] * 9
        self.batches = []
        self.events = []
        seq = 0
        for batch in (batch_a, batch_b):
            rows = []
            for tenant, customer, meter, endpoint, source, time, lag, qty, ukey in batch:
                seq += 1
                ev = {
                    "tenant": tenant, "customer": customer, "meter": meter, "endpoint": endpoint,
                    "id": f"evt_{seq:03d}", "source": source, "time": time,
                    "received_at": time + dt.timedelta(seconds=lag), "quantity": qty, "unique_key": ukey,
                    "data": '{"endpoint":"%s","quantity":%g}' % (endpoint, qty),
                    "kafka_topic": "usage-events", "kafka_partition": seq % 3, "kafka_offset": 1000 + seq,
                }
                rows.append(ev)
                self.events.append(ev)
            self.batches.append(rows)
        self.dead = [
            ("acme", n - dt.timedelta(days=2), "intake", "invalid_value", "quantity must be a number"),
            ("acme", n - dt.timedelta(hours=1), "intake", "invalid_value", "quantity must be >= 0"),
            ("acme", n - dt.timedelta(days=10), "decode", "unknown_meter", "no meter 'x'"),  # older than 7 days
        ]

    def inserts(self):
        out = []
        for i, rows in enumerate(self.batches, 1):
            values = ",\n".join(
                "(" + ", ".join(lit(r[c.strip()]) for c in EVENT_COLUMNS.split(",")) + ")" for r in rows
            )
            out.append((f"insert events_raw batch {i} ({len(rows)} rows)",
                        f"INSERT INTO events_raw ({EVENT_COLUMNS}) VALUES\n{values}"))
        values = ",\n".join(
            f"({lit(t)}, {lit(at)}, {lit(st)}, {lit(code)}, {lit(reason)}, 'evt_bad_{i}', '{{}}', 'usage-rejected', 0, {i})"
            for i, (t, at, st, code, reason) in enumerate(self.dead)
        )
        out.append((f"insert dead_letters ({len(self.dead)} rows)", f"INSERT INTO dead_letters ({DEAD_COLUMNS}) VALUES\n{values}"))
        # Alerts: the 80 % alert of cust_1 twice (a replayed insert: ReplacingMergeTree keeps one),
        # and another tenant's.
        ps = self.month_start.date().isoformat()
        pe = (self.month_start + dt.timedelta(days=32)).replace(day=1).date().isoformat()
        alerts = [
            (f"acme:cust_1:api_call:{ps}:75", "acme", "cust_1", 75, 76.0, self.early),
            (f"acme:cust_1:api_call:{ps}:80", "acme", "cust_1", 80, 81.0, self.now),
            (f"acme:cust_1:api_call:{ps}:80", "acme", "cust_1", 80, 81.0, self.now),
            (f"other:cust_9:api_call:{ps}:75", "other", "cust_9", 75, 75.0, self.now),
        ]
        for a in alerts:
            out.append((f"insert alert {a[0]}", "INSERT INTO alerts (id, tenant, customer, meter, threshold, used, "
                        "limit_value, plan, period_start, period_end, fired_at) VALUES "
                        f"({lit(a[0])}, {lit(a[1])}, {lit(a[2])}, 'api_call', {a[3]}, {a[4]}, 100, 'free', "
                        f"'{ps}', '{pe}', {lit(a[5])})"))
        # Plan changes: cust_1 free -> starter -> professional; cust_2 starter then an override.
        subs = [
            ("cust_1", 1, "plan", '{"id":"s1","change":{"kind":"plan","plan":"starter","status":"active"}}'),
            ("cust_1", 2, "plan", '{"id":"s2","change":{"kind":"plan","plan":"professional","status":"active"}}'),
            ("cust_2", 3, "plan", '{"id":"s3","change":{"kind":"plan","plan":"starter","status":"past_due"}}'),
            ("cust_2", 4, "limit_override", '{"id":"s4","change":{"kind":"limit_override","meter":"api_call","limit":900}}'),
        ]
        values = ",\n".join(
            f"('acme', {lit(c)}, 's{off}', {lit(self.early)}, 'admin', {lit(kind)}, {lit(body)}, {lit(self.now)}, "
            f"'subscription-events', 0, {off})"
            for c, off, kind, body in subs
        )
        out.append(("insert subscription_events", "INSERT INTO subscription_events (tenant, customer, id, time, "
                    "source, kind, body, received_at, kafka_topic, kafka_partition, kafka_offset) VALUES\n" + values))
        return out

    # -- expected results, computed from the rows above --------------------------------------------

    def acme(self, **where):
        return [e for e in self.events if e["tenant"] == "acme" and all(e[k] == v for k, v in where.items())]

    def this_month(self, evs):
        return [e for e in evs if e["time"] >= self.month_start]

    def expected(self):
        """{query name: (description, [columns to compare], expected rows in query order)}"""
        exp = {}
        exp["usage_alerts_recent"] = ("alerts, once each", 3, [("cust_1", "api_call", "80"), ("cust_1", "api_call", "75")])
        exp["current_plan_per_customer"] = ("latest plan", 3, [("cust_1", "professional", "active"),
                                                                ("cust_2", "starter", "past_due")])

        # customer_endpoint_usage_this_month: (customer, meter, endpoint, events, quantity)
        groups = {}
        for e in self.this_month(self.acme()):
            g = groups.setdefault((e["customer"], e["meter"], e["endpoint"]), [0, 0.0])
            g[0] += 1
            g[1] += e["quantity"]
        rows = sorted(((c, m, ep, n, q) for (c, m, ep), (n, q) in groups.items()),
                      key=lambda r: (r[0], r[1], -r[4], r[2]))
        exp["customer_endpoint_usage_this_month"] = ("per-endpoint totals", 5, rows)

        # daily_endpoint_calls_last_30_days: (day, endpoint, events, calls)
        first_day = (self.midnight - dt.timedelta(days=29)).date()
        groups = {}
        for e in self.acme(meter="api_call"):
            if e["time"].date() >= first_day:
                g = groups.setdefault((e["time"].date().isoformat(), e["endpoint"]), [0, 0.0])
                g[0] += 1
                g[1] += e["quantity"]
        rows = sorted((d, ep, n, q) for (d, ep), (n, q) in groups.items())
        exp["daily_endpoint_calls_last_30_days"] = ("daily per-endpoint calls", 4, rows)

        # customers_over_80_percent_of_free_limit: (customer, calls, percent)
        calls = {}
        for e in self.this_month(self.acme(meter="api_call")):
            calls[e["customer"]] = calls.get(e["customer"], 0.0) + e["quantity"]
        rows = sorted(((c, q, round(q, 1)) for c, q in calls.items() if q > 80), key=lambda r: (-r[1], r[0]))
        exp["customers_over_80_percent_of_free_limit"] = ("customers over 80 calls", 3, rows)

        # top_customers_this_month: (customer, calls)
        rows = sorted(calls.items(), key=lambda r: (-r[1], r[0]))[:10]
        exp["top_customers_this_month"] = ("top customers", 2, rows)

        # customer_max_and_unique_this_month: (meter, endpoint, max quantity, unique keys)
        groups = {}
        for e in self.this_month(self.acme(customer="cust_1")):
            g = groups.setdefault((e["meter"], e["endpoint"]), [None, set()])
            g[0] = e["quantity"] if g[0] is None else max(g[0], e["quantity"])
            g[1].add(e["unique_key"])
        rows = sorted((m, ep, mx, len(u)) for (m, ep), (mx, u) in groups.items())
        exp["customer_max_and_unique_this_month"] = ("maxMerge/uniqExactMerge", 4, rows)

        # dead_letters_by_reason_last_7_days: (tenant, stage, reason_code, letters)
        cutoff = self.now - dt.timedelta(days=7)
        groups = {}
        for t, at, st, code, _ in self.dead:
            if at >= cutoff:
                groups[(t, st, code)] = groups.get((t, st, code), 0) + 1
        rows = sorted(((t, st, code, n) for (t, st, code), n in groups.items()), key=lambda r: (-r[3],) + r[:3])
        exp["dead_letters_by_reason_last_7_days"] = ("dead letters in 7 days", 4, rows)

        # customer_hourly_usage_today: (hour, events, calls)
        groups = {}
        for e in self.acme(customer="cust_1", meter="api_call"):
            if e["time"] >= self.midnight:
                g = groups.setdefault(fmt_time(e["time"].replace(minute=0, second=0)), [0, 0.0])
                g[0] += 1
                g[1] += e["quantity"]
        rows = sorted((h, n, q) for h, (n, q) in groups.items())
        exp["customer_hourly_usage_today"] = ("hourly calls today", 3, rows)

        # events_per_source_this_month: (source, events, quantity, customers)
        groups = {}
        for e in self.this_month(self.acme()):
            g = groups.setdefault(e["source"], [0, 0.0, set()])
            g[0] += 1
            g[1] += e["quantity"]
            g[2].add(e["customer"])
        rows = sorted(((s, n, q, len(c)) for s, (n, q, c) in groups.items()), key=lambda r: (-r[1], r[0]))
        exp["events_per_source_this_month"] = ("events per source this month", 4, rows)

        # customer_latest_events: the ids, newest first
        evs = sorted(self.acme(customer="cust_1"), key=lambda e: (e["time"], e["id"]), reverse=True)[:50]
        exp["customer_latest_events"] = ("latest events (id column)", None, [(e["id"],) for e in evs])
        return exp


def same_cell(got, want):
    if isinstance(want, (int, float)):
        try:
            return abs(float(got) - float(want)) < 1e-9
        except ValueError:
            return False
    return got == str(want)


def compare(name, got_rows, spec):
    what, ncols, want_rows = spec
    if ncols is None:  # customer_latest_events: compare the id column (index 7)
        got = [(r[7],) for r in got_rows]
    else:
        got = [tuple(r[:ncols]) for r in got_rows]
    ok = len(got) == len(want_rows) and all(
        len(g) == len(w) and all(same_cell(a, b) for a, b in zip(g, w)) for g, w in zip(got, want_rows)
    )
    if not ok:
        raise CheckFailed(
            f"query {name}: wrong {what}\n  expected: {[tuple(map(str, w)) for w in want_rows]}\n  got:      {got}"
        )
    return what


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------


def short(sql):
    first = sql.strip().splitlines()[0]
    return first if len(first) <= 80 else first[:77] + "..."


def run(engine, apply_modern):
    failures = []

    def must(name, sql):
        try:
            return engine.query(sql)
        except EngineError as e:
            raise CheckFailed(f"FAIL {name} on {engine.where}\n  statement:\n{indent(sql)}\n  error: {e}") from e

    for f in migration_files():
        modern = f.endswith(".modern.sql")
        if modern and not apply_modern:
            print(f"skip {f} (production-only; server major version < {MODERN_MAJOR})")
            continue
        with open(os.path.join(MIGRATIONS_DIR, f), encoding="utf-8") as fh:
            statements = split_statements(fh.read())
        for i, stmt in enumerate(statements, 1):
            name = f"{f}#{i}"
            must(name, stmt)
            print(f"ok {name}: {short(stmt)}")

    sample = Sample()
    for name, sql in sample.inserts():
        must(name, sql)
        print(f"ok {name}")

    queries = parse_named_queries(QUERIES_FILE)
    if not 8 <= len(queries) <= 30:
        raise CheckFailed(f"{QUERIES_FILE}: {len(queries)} queries; expected 8 to 30")
    expected = sample.expected()
    unknown = sorted(set(expected) - {n for n, _, _ in queries})
    if unknown:
        raise CheckFailed(f"the script asserts queries missing from {QUERIES_FILE}: {unknown}")
    for name, _desc, sql in queries:
        try:
            rows = parse_tsv(engine.query(sql))
            if not rows:
                raise CheckFailed(f"query {name}: returned no rows on the sample data")
            note = f" (checked {compare(name, rows, expected[name])})" if name in expected else ""
            print(f"ok {name}: {len(rows)} rows{note}")
        except EngineError as e:
            failures.append(f"FAIL query {name} on {engine.where}\n  statement:\n{indent(sql)}\n  error: {e}")
            print(f"FAIL {name}")
        except CheckFailed as e:
            failures.append(f"FAIL {e}\n  statement:\n{indent(sql)}")
            print(f"FAIL {name}")
    if failures:
        raise CheckFailed("\n".join(failures))
    return len(queries)


def indent(text):
    return "\n".join("    " + line for line in text.strip().splitlines())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", metavar="URL", help="check a live ClickHouse over HTTP instead of chdb")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # keep `ok` lines and errors in order

    engine = None
    failed = True
    try:
        if args.server:
            engine = HttpEngine(args.server)
            version = engine.version()
            major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
            engine.create_database()
            apply_modern = major >= MODERN_MAJOR
        else:
            engine = ChdbEngine()
            version = engine.version()
            apply_modern = True
        print(f"# {engine.label} ClickHouse {version}: {engine.where}")
        n = run(engine, apply_modern)
        failed = False
        print(f"# all migrations and {n} analyst queries passed on ClickHouse {version}")
    except (CheckFailed, EngineError) as e:
        print(str(e), file=sys.stderr)
    finally:
        if engine is not None:
            engine.close(keep=failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
