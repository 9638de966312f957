"""The fault matrix (see faults.py) for the `sql_table` destination on a real PostgreSQL server.

Every fault is produced in PostgreSQL's own form, by real SQL against the real server, armed after
the seeding run and cleared by `disarm()` before the recovery run:

- throttle: another connection holds `LOCK TABLE ... IN ACCESS EXCLUSIVE MODE` for LOCK_HOLD_S;
  no lock_timeout is set, so the run waits for the lock and then completes (the holder checks
  pg_locks to see the run's backend actually queued behind it).
- 5xx: a statement trigger on the table raises SQLSTATE 40001 (serialization_failure) the first
  time a write reaches it.
- connection reset: a statement trigger calls pg_terminate_backend(pg_backend_pid()) the first
  time: the server ends the run's session mid-transaction (FATAL 57P01).
- timeout: the run's URL carries `-c statement_timeout=...` and a statement trigger sleeps past
  it the first time: the server cancels the statement (57014).
- answer lost after apply: the run connects through a TCP relay to the server that, when armed,
  passes the client's COMMIT on, reads the server's answer (CommandComplete "COMMIT" then
  ReadyForQuery, so the commit is done and durable) and closes the client's socket instead of
  relaying it. The client never learns that its transaction committed.
- per-row rejection: a CHECK constraint that k3's new email and the joiner k20 violate, and a
  foreign key from another table that still references the leaver k1 (a removal the server
  refuses); both dropped on disarm.
- bad credentials: the URL names a role that does not exist (the server trusts any password, so a
  wrong password would not fail).

"The first time" is counted by a sequence: nextval is not rolled back with the failing
transaction, where a decremented control row would be (and the fault would never stop firing).

Each fault's evidence is checked after the scenario: the error the server really raised (seen
through SQLAlchemy's handle_error event on the destination's own engine, which observes and
changes nothing), the relay's dropped answer, the lock waiter.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from audience_pipelines.destinations.sql_table import SqlTableSettings
from audience_pipelines.destinations.sql_table.client import SqlTableDestination
from audience_pipelines_tests.faults import plain_settings, ENGINE_FAULTS, M1, MODES, Case, promised, scenario

pytestmark = pytest.mark.postgres

TABLE = "audience_members"
LOCK_HOLD_S = 1.5
STATEMENT_TIMEOUT_MS = 500
NO_SUCH_ROLE = "ap_matrix_no_such_role"


class LosingRelay:
    """A TCP relay to PostgreSQL that can swallow the server's answer to a COMMIT.

    Client messages are framed (the untyped startup packets, then type byte + length) so a simple
    query "COMMIT" is recognised. When armed, that COMMIT still reaches the server; the server's
    answer is read up to ReadyForQuery and dropped, and both sockets are closed.
    """

    SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = 0
        self.lost: list[str] = []  # command tags of the answers never relayed
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            with self._lock:
                self._socks += [client, server]
            state = {"drop": False}
            threading.Thread(target=self._upstream, args=(client, server, state), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, state), daemon=True).start()

    @staticmethod
    def _exact(sock: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _upstream(self, client, server, state) -> None:
        try:
            while True:  # untyped packets: SSL/GSS encryption requests, then the StartupMessage
                head = self._exact(client, 8)
                length, code = struct.unpack("!ii", head)
                server.sendall(head + self._exact(client, length - 8))
                if code not in (self.SSL_REQUEST, self.GSSENC_REQUEST):
                    break
            while True:
                head = self._exact(client, 5)
                body = self._exact(client, struct.unpack("!i", head[1:])[0] - 4)
                if head[:1] == b"Q" and body.lstrip().upper().startswith(b"COMMIT"):
                    with self._lock:
                        if self.armed > 0:
                            self.armed -= 1
                            state["drop"] = True  # set before the server can answer
                server.sendall(head + body)
        except (EOFError, OSError):
            pass
        finally:
            self._close(client, server)

    def _downstream(self, server, client, state) -> None:
        # The protocol is request/answer: when a COMMIT is sent, every earlier answer has been
        # relayed, so the bytes read after `drop` is set start at a message boundary.
        buf, tag = b"", ""
        try:
            while True:
                chunk = server.recv(65536)
                if not chunk:
                    return
                if not state["drop"]:
                    client.sendall(chunk)
                    continue
                buf += chunk
                while len(buf) >= 5:
                    length = struct.unpack("!i", buf[1:5])[0]
                    if len(buf) < 1 + length:
                        break
                    kind, body, buf = buf[:1], buf[5:1 + length], buf[1 + length:]
                    if kind == b"C":
                        tag = body.rstrip(b"\0").decode()
                    elif kind == b"Z":  # the server is done with the COMMIT: lose its answer
                        self.lost.append(tag)
                        return
        except OSError:
            pass
        finally:
            self._close(client, server)

    def stop(self) -> None:
        self._close(self.listener)
        with self._lock:
            self._close(*self._socks)


class SqlTableCase(Case):
    name = "sql_table"
    identifiers = {"email": "email"}
    fields = {"plan": "plan"}

    def __init__(self, url: str, schema: str):
        self.url, self.schema = url, schema
        self.qual = f'"{schema}"."{TABLE}"'
        self.admin = sa.create_engine(url, poolclass=NullPool)  # this test's own sessions
        self.errors: list[dict] = []  # what the server raised to the faulted run's destination
        self.evidence: dict = {}
        self.relay: LosingRelay | None = None
        self.locker: threading.Thread | None = None

    # -- the destination ---------------------------------------------------------

    def settings(self, url: str | None = None) -> SqlTableSettings:
        return SqlTableSettings(url=url or self.url, table=TABLE, db_schema=self.schema)

    def destination(self):
        return SqlTableDestination(self.settings())

    def observed(self, url: str | None = None) -> SqlTableDestination:
        """The destination as a run builds it, with the errors its engine meets recorded."""
        dest = SqlTableDestination(self.settings(url))

        def record(ctx):
            exc = ctx.original_exception
            self.errors.append({"type": type(exc).__name__, "pgcode": getattr(exc, "pgcode", None),
                                "message": str(exc).strip(), "disconnect": ctx.is_disconnect})

        sa.event.listen(dest.engine, "handle_error", record)
        return dest

    def spec(self):
        return "sql_table", plain_settings(self.settings())

    def state(self):
        with self.admin.connect() as conn:
            if conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": self.qual}).scalar() is None:
                return {}
            rows = conn.execute(sa.text(f"SELECT key, email, plan FROM {self.qual} WHERE audience = 'vip'"))
            return {k: {"email": e, "plan": p} for k, e, p in rows}

    def expected(self, members):
        return {k: {"email": e, "plan": p} for k, (e, p) in members.items()}

    def ddl(self, sql: str) -> None:
        with self.admin.begin() as conn:
            conn.exec_driver_sql(sql)

    # -- faults --------------------------------------------------------------------

    def _hold_lock(self) -> None:
        ready = threading.Event()

        def hold():
            waiters = 0
            with self.admin.connect() as conn:
                conn.exec_driver_sql(f"LOCK TABLE {self.qual} IN ACCESS EXCLUSIVE MODE")
                ready.set()
                deadline = time.monotonic() + LOCK_HOLD_S
                while time.monotonic() < deadline:
                    waiters = max(waiters, conn.execute(sa.text(
                        "SELECT count(*) FROM pg_locks WHERE relation = CAST(:t AS regclass) AND NOT granted"),
                        {"t": self.qual}).scalar())
                    time.sleep(0.05)
                conn.commit()
            self.evidence["lock waiters"] = waiters

        self.locker = threading.Thread(target=hold, daemon=True)
        self.locker.start()
        assert ready.wait(10), "the lock was not taken"

    def _trigger(self, body: str) -> None:
        """A statement trigger running `body` the first time a write reaches the table."""
        s = self.schema
        self.ddl(f"""
            CREATE SEQUENCE "{s}".fault_once;
            CREATE FUNCTION "{s}".fault_fire() RETURNS trigger LANGUAGE plpgsql AS $f$
            BEGIN
                IF nextval('"{s}".fault_once') = 1 THEN {body} END IF;
                RETURN NULL;
            END $f$;
            CREATE TRIGGER fault_fire BEFORE INSERT OR UPDATE OR DELETE ON {self.qual}
                FOR EACH STATEMENT EXECUTE FUNCTION "{s}".fault_fire();
        """)

    def _reset(self):
        self._trigger("PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(5);")
        return self.observed()

    def _timeout(self):
        self._trigger("PERFORM pg_sleep(5);")
        url = sa.make_url(self.url)
        options = f"{url.query.get('options', '')} -c statement_timeout={STATEMENT_TIMEOUT_MS}".strip()
        return self.observed(url.update_query_dict({"options": options}).render_as_string(hide_password=False))

    def _lose_answer(self):
        url = sa.make_url(self.url)
        self.relay = LosingRelay(url.host or "127.0.0.1", url.port or 5432)
        self.relay.armed = 1
        via = url.set(host="127.0.0.1", port=self.relay.port).update_query_dict(
            {"sslmode": "disable", "gssencmode": "disable"})
        return self.observed(via.render_as_string(hide_password=False))

    def _reject_rows(self):
        # k3's new email and the joiner k20 fail a CHECK; the leaver k1 is still referenced elsewhere.
        self.ddl(f"""
            ALTER TABLE {self.qual} ADD CONSTRAINT fault_reject
                CHECK (email <> 'moved3@example.com' AND key <> 'k20');
            CREATE TABLE "{self.schema}".fault_ref (audience text, key text,
                FOREIGN KEY (audience, key) REFERENCES {self.qual} (audience, key));
            INSERT INTO "{self.schema}".fault_ref VALUES ('vip', 'k1');
        """)
        return self.observed()

    def _bad_credentials(self):
        url = sa.make_url(self.url).set(username=NO_SUCH_ROLE)
        return self.observed(url.render_as_string(hide_password=False))

    faults = {
        "throttle": lambda c: (c._hold_lock(), c.observed())[1],
        "5xx": lambda c: (c._trigger("RAISE EXCEPTION 'could not serialize access (injected)' "
                                     "USING ERRCODE = '40001';"), c.observed())[1],
        "connection reset": lambda c: c._reset(),
        "timeout": lambda c: c._timeout(),
        "answer lost after apply": lambda c: c._lose_answer(),
        "per-row rejection": lambda c: c._reject_rows(),
        "bad credentials": lambda c: c._bad_credentials(),
    }

    def disarm(self):
        if self.locker is not None:
            self.locker.join(30)
            self.locker = None
        if self.relay is not None:
            self.relay.stop()
        s = self.schema
        with self.admin.begin() as conn:
            if conn.exec_driver_sql(f"""SELECT to_regclass('"{s}".fault_once')""").scalar():
                # nextval was called by some write (sequences are not rolled back with it)
                self.evidence["trigger fired"] = conn.exec_driver_sql(
                    f'SELECT is_called FROM "{s}".fault_once').scalar()
            conn.exec_driver_sql(f"""
                DROP TRIGGER IF EXISTS fault_fire ON {self.qual};
                DROP FUNCTION IF EXISTS "{s}".fault_fire();
                DROP SEQUENCE IF EXISTS "{s}".fault_once;
                ALTER TABLE {self.qual} DROP CONSTRAINT IF EXISTS fault_reject;
                DROP TABLE IF EXISTS "{s}".fault_ref;
            """)
        self.evidence["state after fault"] = self.state()

    def close(self) -> None:
        """After the scenario, even a failed one: nothing may hold the schema the fixture drops."""
        if self.locker is not None:
            self.locker.join(30)
        if self.relay is not None:
            self.relay.stop()
        self.admin.dispose()

    # -- did the fault really happen? ------------------------------------------------

    def check_fired(self, fault: str, mode: str) -> None:
        codes = {e["pgcode"] for e in self.errors}
        text = " ".join(e["message"] for e in self.errors)
        after = self.evidence.get("state after fault")
        if fault == "throttle":
            assert self.evidence["lock waiters"] >= 1, "the run never waited for the lock"
            assert not self.errors and after == self.expected(promised(mode)), "the run did not complete"
        elif fault == "5xx":
            assert self.evidence["trigger fired"] and codes == {"40001"}, self.errors
        elif fault == "connection reset":
            # psycopg2 reports the lost session, not the FATAL 57P01 the server sent before closing it
            assert self.evidence["trigger fired"] and any(e["disconnect"] for e in self.errors), self.errors
        elif fault == "timeout":
            assert self.evidence["trigger fired"] and codes == {"57014"} and "statement timeout" in text, self.errors
        elif fault == "answer lost after apply":
            assert self.relay.lost == ["COMMIT"], self.relay.lost
            assert any(e["disconnect"] for e in self.errors), self.errors
            assert after != self.expected(M1), "the lost COMMIT was not applied"
        elif fault == "per-row rejection":
            # Each refused row fails alone and the run goes on: the removal of k1 (still referenced by
            # fault_ref) where removals are sent, the CHECK on k3's new email and k20 where adds are.
            opts = MODES[mode]
            want = set()
            if opts["mode"] != "additive" and opts.get("removal", "remove") == "remove":
                want.add("23503")
            if opts["mode"] != "subtractive":
                want.add("23514")
            assert codes == want, self.errors
        elif fault == "bad credentials":
            assert f'role "{NO_SUCH_ROLE}" does not exist' in text, self.errors


SQL_FAULTS = list(SqlTableCase.faults)


@pytest.fixture
def case(pg_schema):
    url, schema = pg_schema
    c = SqlTableCase(url, schema)
    try:
        yield c
    finally:
        c.close()


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("fault", [*SQL_FAULTS, *ENGINE_FAULTS])
def test_fault_matrix_sql(case, fault, mode, tmp_path, monkeypatch):
    scenario(case, fault, mode, tmp_path, monkeypatch)
    case.check_fired(fault, mode)
