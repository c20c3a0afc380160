#!/usr/bin/env python3
"""Runs Tally's ClickHouse statements on a current ClickHouse (chdb-core, in-process) and
compares the answers with the development stack's ClickHouse 18.16.

Called by tests/current_clickhouse.rs with one JSON file (see that test) that lists:
  - database:   the test's ClickHouse database on 18.16 (same name in chdb)
  - server:     18.16's HTTP URL, user, password
  - migrations: the statements of migrations/clickhouse/, in order ({db} replaced)
  - tables:     tables whose rows 18.16 holds, copied into chdb before comparing
  - compare:    read statements (SELECT, and the SELECT of INSERT ... SELECT): each runs on both
                engines over the same rows; the answers (column names, and rows as a multiset)
                must be equal: integers and decimals exactly, floats to 10 significant digits,
                decimal text without its trailing zeros
  - run:        every write statement the services sent, in order, with the RowBinary data of
                inserts (a file each): each must run on chdb without error (after the comparisons)
Prints a JSON report; exits 1 if any statement failed or any answer differed.

Needs the virtual environment of scripts/python-env (chdb-core).
"""
import json
import re
import sys
import tempfile
import urllib.parse
import urllib.request
from decimal import Decimal

from chdb import session

# toString of a Decimal pads to the scale on 18.16 ("0.007350000000") and drops trailing zeros on
# current releases ("0.00735", and "0" for zero); Tally parses both into the same decimal, so
# numeric text compares as its decimal value.
DECIMAL_TEXT = re.compile(r"^-?\d+(\.\d+)?$")
NUMERIC = re.compile(r"^(Nullable\()?(LowCardinality\()?(U?Int\d+|Float\d+|Decimal)")
FLOAT = re.compile(r"^(Nullable\()?Float")


def server_query(server, database, sql):
    url = f"{server['url']}/?database={urllib.parse.quote(database)}"
    request = urllib.request.Request(url, data=sql.encode())
    if server.get("user"):
        request.add_header("X-ClickHouse-User", server["user"])
        request.add_header("X-ClickHouse-Key", server.get("password", ""))
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read().decode()


def parse(text):
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def normalise(value, column_type):
    if value is None:
        return None
    if isinstance(value, list):
        inner = column_type[len("Array("):-1] if column_type.startswith("Array(") else column_type
        return [normalise(item, inner) for item in value]
    if NUMERIC.match(column_type):
        number = Decimal(str(value))
        if FLOAT.match(column_type):
            return format(float(number), ".10g")
        return str(number.normalize()) if number != 0 else "0"
    if isinstance(value, str) and DECIMAL_TEXT.match(value):
        number = Decimal(value)
        return "decimal " + (str(number.normalize()) if number != 0 else "0")
    return value


def answer(text):
    body = parse(text)
    names = [column["name"] for column in body["meta"]]
    types = [column["type"] for column in body["meta"]]
    rows = [[normalise(value, kind) for value, kind in zip(row, types)] for row in body["data"]]
    return names, sorted(json.dumps(row, sort_keys=True) for row in rows)


def main(path):
    with open(path) as file:
        job = json.load(file)
    database, server = job["database"], job["server"]
    engine = session.Session()
    report = {"engine": engine.query("SELECT version()", "TSV").bytes().decode().strip(), "migrations": 0, "copied_rows": 0,
              "compared": 0, "ran": 0, "failures": []}

    def fail(kind, sql, why):
        report["failures"].append({"kind": kind, "sql": sql[:3000], "why": why if isinstance(why, dict) else str(why)[:3000]})

    engine.query(f"CREATE DATABASE IF NOT EXISTS {database}")
    engine.query(f"USE {database}")
    for sql in job["migrations"]:
        try:
            engine.query(sql)
            report["migrations"] += 1
        except Exception as error:  # noqa: BLE001 - chdb raises its own error type
            fail("migration", sql, error)
    for table in job["tables"]:
        rows = server_query(server, database, f"SELECT * FROM {table} FORMAT TabSeparated")
        with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as copy:
            copy.write(rows)
        try:
            engine.query(f"INSERT INTO {table} FROM INFILE '{copy.name}' FORMAT TabSeparated")
            report["copied_rows"] += rows.count("\n")
        except Exception as error:  # noqa: BLE001
            fail("copy", table, error)
    for sql in job["compare"]:
        try:
            old = answer(server_query(server, database, f"{sql}\nFORMAT JSONCompact"))
        except Exception as error:  # noqa: BLE001
            fail("18.16", sql, error)
            continue
        try:
            new = answer(engine.query(sql, "JSONCompact").bytes().decode())
        except Exception as error:  # noqa: BLE001
            fail("current", sql, error)
            continue
        report["compared"] += 1
        if old != new:
            first = next((i for i, (a, b) in enumerate(zip(old[1], new[1])) if a != b), min(len(old[1]), len(new[1])))
            fail("answer", sql, {"columns": [old[0], new[0]], "rows": [len(old[1]), len(new[1])],
                                 "first difference (18.16, current)": [old[1][first:first + 1], new[1][first:first + 1]]})
    for statement in job["run"]:
        sql = statement["sql"]
        try:
            if statement.get("data") is not None:
                head, _, format_name = sql.rpartition(" FORMAT ")
                engine.query(f"{head} FROM INFILE '{statement['data']}' FORMAT {format_name}")
            else:
                engine.query(sql)
            report["ran"] += 1
        except Exception as error:  # noqa: BLE001
            fail("run", sql, error)
    print(json.dumps(report, indent=1, default=str))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
