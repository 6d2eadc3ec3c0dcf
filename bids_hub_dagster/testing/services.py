"""Real servers for tests of the cluster setup: PostgreSQL, Redis, an S3 server (moto) and Celery workers.

Each is a context manager that starts the server on ``127.0.0.1`` (a spare port), waits a bounded time
for it to answer (saying what it waited for when it does not), yields how to reach it, and stops it on
exit, even after an error: process groups get SIGTERM, then SIGKILL (see
:func:`~bids_hub_dagster.testing.dagster_servers.stop_process_group`). Server logs go to files in the
folder given, for assertion messages.

A missing program raises :class:`ServiceUnavailable` naming it and how to install it; tests turn that into
a skip with the reason, or a failure when ``BIDS_HUB_REQUIRE_SERVICES=1`` (CI installs the programs).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .dagster_servers import free_port, stop_process_group

REQUIRE_ENV = "BIDS_HUB_REQUIRE_SERVICES"
START_TIMEOUT = 60.0  # seconds a server gets to answer after it was started


class ServiceUnavailable(RuntimeError):
    """A server program is not installed here (the message names it and the Debian package)."""


def require_services() -> bool:
    """Whether a missing server program fails tests, not skips them (``BIDS_HUB_REQUIRE_SERVICES=1``)."""
    return os.environ.get(REQUIRE_ENV, "") == "1"


def _wait(
    what: str,
    ready: Callable[[], bool],
    timeout: float,
    log: Path | None = None,
    alive: Callable[[], bool] = lambda: True,
) -> None:
    """Poll ``ready()`` until true; TimeoutError naming ``what`` (and the log's end) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001  (not answering yet)
            pass
        tail = _tail(log)
        if not alive():
            raise RuntimeError(f"{what}: the process exited before it answered\n{tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: no answer within {timeout:g} s\n{tail}")
        time.sleep(0.2)


def _tail(log: Path | None, chars: int = 3000) -> str:
    if log is None or not log.is_file():
        return ""
    return f"--- {log}, last {chars} chars ---\n{log.read_text(errors='replace')[-chars:]}"


# --- PostgreSQL --------------------------------------------------------------------------------------


def postgres_bin(name: str) -> Path:
    """The path of PostgreSQL's program ``name`` (``initdb``, ``pg_ctl``), or ServiceUnavailable."""
    found = shutil.which(name)
    if found:
        return Path(found)
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version_key)
    if candidates:
        return Path(candidates[-1])  # the newest installed version
    raise ServiceUnavailable(
        f"PostgreSQL's {name} was not found on PATH nor in /usr/lib/postgresql/*/bin: "
        "install it (Debian: `apt-get install -y postgresql`)"
    )


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parts[-3]
    return tuple(int(p) for p in version.split(".") if p.isdigit())


@dataclass
class Postgres:
    """A running PostgreSQL server: connect with ``params`` (psycopg2 keywords) or ``dsn``."""

    host: str
    port: int
    user: str
    password: str
    db_name: str
    data_dir: Path
    log: Path

    @property
    def params(self) -> dict[str, object]:
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": self.db_name,
        }

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.db_name}"

    @property
    def env(self) -> dict[str, str]:
        """The variables deploy/cluster/dagster.yaml reads for its storage."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.db_name,
        }


def _as_user(user: str | None, command: Sequence[str]) -> list[str]:
    """``command`` run as ``user`` (``runuser``, else ``su``), or as it is when ``user`` is None."""
    if user is None:
        return list(command)
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", user, "--", *command]
    quoted = " ".join(_shell_quote(c) for c in command)
    return ["su", user, "-s", "/bin/sh", "-c", quoted]


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


@contextmanager
def postgres_server(
    tmp: Path, *, db_name: str = "dagster", timeout: float = START_TIMEOUT
) -> Iterator[Postgres]:
    """``initdb`` a fresh cluster and start it (``pg_ctl``) on a spare port with ``fsync=off``.

    PostgreSQL refuses to run as root: as root, the cluster belongs to the ``postgres`` user (created by
    Debian's package) and lives in a folder of its own under the system temp folder (pytest's temporary
    folders are closed to other users); it is deleted on exit. The log is ``tmp/postgres.log``. Only
    TCP on 127.0.0.1, password authentication; the database ``db_name`` is created.
    """
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    tmp.mkdir(parents=True, exist_ok=True)
    user = None
    if os.geteuid() == 0:
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise ServiceUnavailable(
                "running as root, PostgreSQL needs the system user `postgres` (Debian's `postgresql` "
                "package creates it), which does not exist"
            ) from None
        user = "postgres"
    root = Path(tempfile.mkdtemp(prefix="bids-hub-pg-"))
    try:
        data, pwfile = root / "data", root / "pwfile"
        password = "bids-hub-test"
        pwfile.write_text(password + "\n")
        if user is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        log = tmp / "postgres.log"
        server_log = root / "server.log"  # written by the server's user; copied to ``log`` on exit
        init = subprocess.run(
            _as_user(
                user,
                [
                    str(initdb),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
            ),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb -D {data} failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
        port = free_port()
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        started = subprocess.run(
            _as_user(
                user,
                [
                    str(pg_ctl),
                    "start",
                    "-D",
                    str(data),
                    "-l",
                    str(server_log),
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "-o",
                    options,
                ],
            ),
            capture_output=True,
            text=True,
            timeout=timeout + 10,
        )
        try:
            if started.returncode != 0:
                raise RuntimeError(
                    f"pg_ctl start -D {data} failed ({started.returncode}):\n"
                    f"{started.stdout}\n{started.stderr}\n"
                    f"{server_log.read_text(errors='replace')[-3000:] if server_log.is_file() else ''}"
                )
            server = Postgres("127.0.0.1", port, "postgres", password, db_name, data, log)
            import psycopg2

            def create_db() -> bool:
                conn = psycopg2.connect(**{**server.params, "dbname": "postgres"}, connect_timeout=5)
                try:
                    conn.autocommit = True
                    with conn.cursor() as cur:
                        cur.execute(f'CREATE DATABASE "{db_name}"')
                finally:
                    conn.close()
                return True

            _wait(
                f"PostgreSQL on 127.0.0.1:{port} (CREATE DATABASE {db_name})", create_db, timeout, server_log
            )
            yield server
        finally:
            stopped = subprocess.run(
                _as_user(user, [str(pg_ctl), "stop", "-D", str(data), "-m", "fast", "-w", "-t", "30"]),
                capture_output=True,
                text=True,
                timeout=60,
            )
            if stopped.returncode != 0:
                _kill_postmaster(data)
            if server_log.is_file():
                shutil.copyfile(server_log, log)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _kill_postmaster(data: Path) -> None:
    """SIGKILL the postmaster of ``data`` and its session (pg_ctl starts it in a session of its own)."""
    import signal

    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        os.killpg(pid, signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass


# --- Redis ---------------------------------------------------------------------------------------------


@dataclass
class Redis:
    host: str
    port: int
    log: Path

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"


def redis_bin() -> Path:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").is_file() else None
    )
    if not found:
        raise ServiceUnavailable(
            "redis-server was not found on PATH: install it (Debian: `apt-get install -y redis-server`)"
        )
    return Path(found)


@contextmanager
def redis_server(tmp: Path, *, timeout: float = START_TIMEOUT) -> Iterator[Redis]:
    """``redis-server`` on a spare port of 127.0.0.1, without persistence; log ``tmp/redis.log``."""
    binary = redis_bin()
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = tmp / "redis.log"
    command = [
        str(binary),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp),
        "--logfile",
        str(log),
        "--daemonize",
        "no",
    ]
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        import redis

        def pong() -> bool:
            client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=2, socket_timeout=2)
            try:
                return bool(client.ping())
            finally:
                client.close()

        _wait(
            f"redis-server on 127.0.0.1:{port} (PING)", pong, timeout, log, alive=lambda: proc.poll() is None
        )
        yield Redis("127.0.0.1", port, log)
    finally:
        stop_process_group(proc, grace=10)


# --- S3 (moto) -----------------------------------------------------------------------------------------


@dataclass
class S3Server:
    endpoint_url: str
    bucket: str
    env: dict[str, str] = field(default_factory=dict)  # what boto3/s3fs clients need to reach it


@contextmanager
def moto_s3_server(bucket: str = "bids-hub-test") -> Iterator[S3Server]:
    """moto's ``ThreadedMotoServer`` on 127.0.0.1 (a spare port) holding the empty bucket ``bucket``."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        raise ServiceUnavailable(
            f"moto's server is not installed ({exc}): pip install 'moto[server]'"
        ) from None
    import boto3

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        _wait(
            f"moto S3 server at {endpoint} (create bucket {bucket})",
            lambda: bool(client.create_bucket(Bucket=bucket)),
            START_TIMEOUT,
        )
        yield S3Server(endpoint, bucket, env)
    finally:
        server.stop()


# --- Celery workers ---------------------------------------------------------------------------------------


@dataclass
class CeleryWorkers:
    """Started ``dagster-celery worker`` processes: their node names (``worker1@host``) and logs."""

    names: list[str]
    logs: dict[str, Path]
    processes: dict[str, subprocess.Popen]

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(_tail(path, chars) for path in self.logs.values())

    def check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"celery worker {name} exited with code {proc.returncode}\n{self.log_tail()}"
                )


def _terminate_all(processes: Sequence[subprocess.Popen]) -> None:
    """SIGTERM the process group of each of ``processes`` (started with ``start_new_session``)."""
    import signal

    for proc in processes:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass


def celery_bin() -> Path:
    path = Path(sys.executable).with_name("dagster-celery")
    if path.is_file():
        return path
    found = shutil.which("dagster-celery")
    if not found:
        raise ServiceUnavailable(
            "dagster-celery was not found: install the extra `bids_hub_dagster[cluster]`"
        )
    return Path(found)


@contextmanager
def celery_workers(
    n: int,
    env: Mapping[str, str],
    config: Path,
    workdir: Path,
    *,
    broker: str,
    queues: Sequence[str] = ("dagster",),
    concurrency: int = 1,
    timeout: float = START_TIMEOUT,
) -> Iterator[CeleryWorkers]:
    """Start ``n`` workers ``dagster-celery worker start -A dagster_celery.app -y config`` named worker1…N.

    ``env`` is added to this process's environment (``DAGSTER_HOME`` of the cluster instance, the
    broker's variables, ``BIDS_HUB_SPECS`` …). Each worker takes ``concurrency`` runs at a time, each in
    a fresh child process (``--max-tasks-per-child 1``: a run's imports and memory die with it). Waits
    until every worker answers a ping through ``broker``; logs are ``workdir/workerI.log``.
    """
    binary = celery_bin()
    workdir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    # dagster-celery runs `celery` from PATH: the one installed beside it
    full_env["PATH"] = os.pathsep.join([str(binary.parent), full_env.get("PATH", "")])
    import socket

    host = socket.gethostname()
    workers = CeleryWorkers(names=[], logs={}, processes={})
    with ExitStack() as stack:
        for i in range(1, n + 1):
            name = f"worker{i}"
            log = workdir / f"{name}.log"
            out = stack.enter_context(open(log, "wb"))
            command = [
                str(binary),
                "worker",
                "start",
                "-A",
                "dagster_celery.app",
                "-y",
                str(config),
                "-n",
                name,
                "--loglevel",
                "INFO",
            ]
            for queue in queues:
                command += ["-q", queue]
            command += ["--", f"--concurrency={concurrency}", "--max-tasks-per-child=1"]
            proc = subprocess.Popen(
                command,
                cwd=workdir,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            stack.callback(
                stop_process_group, proc, 30.0
            )  # registered at once: stopped even if the next fails
            workers.names.append(f"{name}@{host}")
            workers.logs[name] = log
            workers.processes[name] = proc
        # on exit, every worker gets SIGTERM (a warm shutdown) at once; then each is waited for, in turn
        stack.callback(_terminate_all, list(workers.processes.values()))
        from celery import Celery

        app = Celery("bids_hub_ping", broker=broker)

        def all_answer() -> bool:
            answered = {name for reply in app.control.ping(timeout=1.0) for name in reply}
            return set(workers.names) <= answered

        try:
            _wait(
                f"celery workers {', '.join(workers.names)} (ping through {broker})",
                all_answer,
                timeout,
                alive=lambda: all(p.poll() is None for p in workers.processes.values()),
            )
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n{workers.log_tail()}") from None
        finally:
            app.close()
        yield workers
