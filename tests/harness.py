"""Real etcd, real Kafka and the real `logship run` process, for end-to-end tests.

Every wait is a condition polled against a deadline; nothing sleeps for a fixed time
to let something happen.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import etcd3
import etcd3.exceptions
import grpc
import yaml
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient as ConfluentAdmin
from prometheus_client.parser import text_string_to_metric_families
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import (ACL, ACLOperation, ACLPermissionType, NewTopic, ResourcePattern,
                         ResourceType)

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


def wait_until(condition: Callable[[], object], timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port_pair() -> int:
    """A port whose successor is free too (the services use PORT+1 internally)."""
    while True:
        port = free_port(set())
        if _free(port + 1):
            return port


def free_port(avoid: set[int]) -> int:
    """A free port that is none of `avoid` (ports chosen but not bound yet).

    Chosen below the kernel's ephemeral range: a broker stopped by a test is started
    again on its port, and while it is down an outgoing connection of any client
    (the agent reconnecting, a consumer) could otherwise be given that port as its own
    and hold it ("Address already in use" at the restart, CI at 5496f0e).
    """
    ephemeral_low = int(EPHEMERAL_PORTS.read_text().split()[0])
    while True:
        port = random.randrange(10000, ephemeral_low - 1)
        if port not in avoid and _free(port):
            return port


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def logship(*args: str, stdin: bytes | None = None, **kwargs) -> subprocess.CompletedProcess:
    """A one-shot `logship` command (check, put, get, ...), as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "logship", *map(str, args)], input=stdin,
                          capture_output=True, timeout=120, **kwargs)


AS_IN_A_TERMINAL = ["env", "--default-signal=INT"]
"""A command's prefix: Ctrl-C stops a terminal's foreground job, even when the test suite
itself was started in the background, where SIGINT is ignored and its children inherit
that. Not a preexec_fn: Python code run between fork and exec aborts the child while
gRPC's threads (an etcd3 client of the test) run in the test process."""


def without_module(directory: Path, module: str) -> dict[str, str]:
    """An environment in which `module` cannot be imported, as on a host where it was
    never installed: a package of that name that raises what a missing one raises."""
    package = directory / module
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(
        f"raise ModuleNotFoundError({f'No module named {module!r}'!r}, name={module!r})\n")
    return {**os.environ, "PYTHONPATH": str(directory)}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Service:
    """A local service run in the foreground by one of our scripts."""

    script = ""
    start_timeout = 60.0

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port_pair()
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    env: dict[str, str] = {}

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """The process alone: the members of a cluster are launched before any is ready."""
        log = open(self.data_dir.with_suffix(".log"), "ab")
        self.proc = subprocess.Popen([str(SCRIPTS / self.script), "run", str(self.port),
                                      str(self.data_dir)], stdout=log, stderr=log,
                                     env={**os.environ, **self.env}, start_new_session=True)

    def wait_ready(self) -> None:
        wait_until(self.ready, self.start_timeout, f"{self.script} on port {self.port}", 0.2)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            logs = [self.data_dir.with_suffix(".log"), self.data_dir / "format.log",
                    self.data_dir / "kafka.log"]
            tail = "".join(p.read_text(errors="replace")[-3000:] for p in logs if p.exists())
            raise AssertionError(f"{self.script} exited with {self.proc.returncode}:\n{tail}")
        return port_open(self.port)

    def stop(self) -> None:
        if self.proc is None:
            return
        _signal_group(self.proc, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            _signal_group(self.proc, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        wait_until(lambda: not port_open(self.port), 30, f"port {self.port} to close", 0.1)

    def kill(self) -> None:
        """kill -9, as a crash or a lost host ends it."""
        if self.proc is None:
            return
        _signal_group(self.proc, signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        wait_until(lambda: not port_open(self.port), 30, f"port {self.port} to close", 0.1)


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    """Signal a service's whole process group, which is gone already if it failed to start."""
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


class Etcd(Service):
    script = "local-etcd.sh"

    @property
    def endpoint(self) -> str:
        """As written in etcd.endpoints."""
        return self.address

    def client(self):
        return etcd3.client(host="127.0.0.1", port=self.port, timeout=5)

    def put(self, key: str, value) -> None:
        raw = value if isinstance(value, (str, bytes)) else json.dumps(value)
        with self.client() as client:
            client.put(key, raw)

    def put_all(self, values: dict[str, str]) -> None:
        """Many keys, 100 a transaction (etcd's default limit is 128 operations)."""
        items = list(values.items())
        with self.client() as client:
            for start in range(0, len(items), 100):
                client.transaction(compare=[], failure=[], success=[
                    client.transactions.put(key, value) for key, value in items[start:start + 100]])

    def delete(self, key: str) -> None:
        with self.client() as client:
            client.delete(key)

    def get(self, key: str) -> bytes | None:
        with self.client() as client:
            return client.get(key)[0]


class KeyWrites:
    """Every write of one etcd key from now on, seen by `etcdctl watch` (a process of its
    own: etcd3's watch thread would leave gRPC running in this one, and a child forked
    from a process with gRPC threads may abort before its exec): (monotonic time, value)."""

    def __init__(self, etcd: Etcd, key: str) -> None:
        self.writes: list[tuple[float, bytes]] = []
        with etcd.client() as client:
            revision = client.get_response(key).header.revision
        self._proc = subprocess.Popen(
            ["etcdctl", f"--endpoints={etcd.endpoint}", "watch", key, "--rev",
             str(revision + 1), "--write-out=json"], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env={**os.environ, "ETCDCTL_API": "3"})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            response = json.loads(line)
            self.writes += [(time.monotonic(), base64.b64decode(event["kv"].get("value", "")))
                            for event in response.get("Events") or []
                            if event.get("type", 0) == 0]

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)
        self._reader.join(10)


def etcd_metric(etcd: Etcd, name: str, **labels: str) -> float:
    """One series of the etcd server's own /metrics."""
    with urllib.request.urlopen(f"http://{etcd.address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


ETCD_ROOT_PASSWORD = "etcd-root-secret-0815"
ETCD_USER, ETCD_PASSWORD = "logship", "etcd-user-secret-4711"
ETCD_NOBODY = "nobody"
ETCD_KEY_PREFIX = "/logship-test/"
ETCD_STATUS_PREFIX = "/logship-test-agents/"


class SecureEtcd(Etcd):
    """etcd serving clients over TLS only. With `client_certificates` it requires a client
    certificate signed by the test CA; with `auth` it has users and roles (through
    etcdctl): root, ETCD_USER who may read the keys under ETCD_KEY_PREFIX and write
    status documents under ETCD_STATUS_PREFIX, and ETCD_NOBODY (same password) who may
    do nothing."""

    def __init__(self, data_dir: Path, certificates: Certificates, client_certificates: bool,
                 auth: bool) -> None:
        super().__init__(data_dir)
        self.certs = certificates
        self.client_certificates = client_certificates
        self.auth = auth
        self.env = {"ETCD_CERT": str(certificates.server_cert),
                    "ETCD_KEY": str(certificates.server_key),
                    **({"ETCD_CLIENT_CA": str(certificates.ca)} if client_certificates else {})}

    @property
    def endpoint(self) -> str:
        return f"https://{self.address}"

    def start(self) -> None:
        super().start()
        if self.auth:
            self._enable_auth()

    def settings(self, user: str | None = "root") -> dict:
        """The agent's etcd section for this server, authenticated as `user`."""
        tls = {"ca_cert": str(self.certs.ca)}
        if self.client_certificates:
            tls |= {"cert_cert": str(self.certs.client_cert),
                    "cert_key": str(self.certs.client_key)}
        if self.auth and user is not None:
            tls |= {"user": user,
                    "password": ETCD_ROOT_PASSWORD if user == "root" else ETCD_PASSWORD}
        return {"endpoints": [self.endpoint], "timeout": 2, "probe_interval": 1, **tls}

    def client(self):
        settings = self.settings()
        return etcd3.client(host="127.0.0.1", port=self.port, timeout=5,
                            ca_cert=settings["ca_cert"], cert_cert=settings.get("cert_cert"),
                            cert_key=settings.get("cert_key"), user=settings.get("user"),
                            password=settings.get("password"))

    def _enable_auth(self) -> None:
        self._etcdctl("user", "add", "root", f"--new-user-password={ETCD_ROOT_PASSWORD}")
        self._etcdctl("role", "add", "logship-reader")
        self._etcdctl("role", "grant-permission", "logship-reader", "read", ETCD_KEY_PREFIX,
                      "--prefix")
        self._etcdctl("role", "grant-permission", "logship-reader", "readwrite",
                      ETCD_STATUS_PREFIX, "--prefix")
        for user in (ETCD_USER, ETCD_NOBODY):
            self._etcdctl("user", "add", user, f"--new-user-password={ETCD_PASSWORD}")
        self._etcdctl("user", "grant-role", ETCD_USER, "logship-reader")
        self._etcdctl("auth", "enable")

    def _etcdctl(self, *args: str) -> None:
        tls = ["--cacert", str(self.certs.ca)]
        if self.client_certificates:
            tls += ["--cert", str(self.certs.client_cert), "--key", str(self.certs.client_key)]
        subprocess.run(["etcdctl", f"--endpoints={self.endpoint}", *tls, *args],
                       env={**os.environ, "ETCDCTL_API": "3"}, check=True, capture_output=True,
                       timeout=30)


class KafkaAdmin:
    """What tests ask of a broker or a cluster (at `address`) through its admin API."""

    address: str

    def _admin(self) -> KafkaAdminClient:
        return KafkaAdminClient(bootstrap_servers=self.address, api_version=(2, 8))

    def create_topic(self, name: str, replicas: int = 1, **configs: str) -> None:
        """A topic of one partition with its own settings, e.g. a lower max.message.bytes."""
        admin = self._admin()
        try:
            admin.create_topics([NewTopic(name, 1, replicas, topic_configs=configs)])
        finally:
            admin.close()

    def delete_topic(self, name: str) -> None:
        admin = self._admin()
        try:
            admin.delete_topics([name])
        finally:
            admin.close()

    def partitions(self, *topics: str) -> list[dict]:
        """Each partition of the topics (every topic without any): leader_id,
        replica_nodes, isr_nodes."""
        admin = self._admin()
        try:
            described = admin.describe_topics(list(topics) or None)
        finally:
            admin.close()
        return [{**partition, "topic": topic["name"]} for topic in described
                for partition in topic["partitions"]]

    def leader(self, topic: str) -> int:
        """The node id leading a topic of one partition."""
        [partition] = self.partitions(topic)
        return partition["leader_id"]

    def in_sync(self) -> bool:
        """Every partition's replicas all in sync: one broker may be restarted next."""
        return all(sorted(p["isr_nodes"]) == sorted(p["replica_nodes"])
                   for p in self.partitions())


class Kafka(KafkaAdmin, Service):
    script = "local-kafka.sh"
    start_timeout = 120.0

    def ready(self) -> bool:
        if not super().ready():
            return False
        try:
            consumer = KafkaConsumer(bootstrap_servers=self.address, api_version=(2, 8),
                                     request_timeout_ms=3000)
        except Exception:
            return False
        try:
            return consumer.topics() is not None
        except Exception:
            return False
        finally:
            consumer.close()


def cluster_ports(size: int) -> list[int]:
    """`size` port pairs (a service uses PORT+1 too), none overlapping."""
    ports: list[int] = []
    while len(ports) < size:
        port = free_port_pair()
        if not {port, port + 1} & {p + d for p in ports for d in (0, 1)}:
            ports.append(port)
    return ports


class Cluster:
    """Members of one service started together: each is one of its kind (Etcd, Kafka),
    killed, stopped and started alone by the tests."""

    members: list[Service]

    def start(self) -> None:
        for member in self.members:
            member.data_dir.parent.mkdir(parents=True, exist_ok=True)
            member.launch()
        for member in self.members:
            member.wait_ready()

    def stop(self) -> None:
        for member in self.members:
            member.stop()


class KafkaCluster(KafkaAdmin, Cluster):
    """Three KRaft nodes, each broker and controller, as production runs Kafka: topics
    and the transaction log replicated three times, min.insync.replicas 2."""

    def __init__(self, data_dir: Path, size: int = 3) -> None:
        ports = cluster_ports(size)
        cluster_id = _kafka_cluster_id()
        voters = ",".join(f"{i + 1}@127.0.0.1:{port + 1}" for i, port in enumerate(ports))
        self.members = []
        for i, port in enumerate(ports):
            node = Kafka(data_dir / f"node-{i + 1}", port)
            node.env = {"KAFKA_NODE_ID": str(i + 1), "KAFKA_VOTERS": voters,
                        "KAFKA_CLUSTER_ID": cluster_id, "KAFKA_REPLICATION": str(size)}
            self.members.append(node)

    @property
    def address(self) -> str:
        """As a client's bootstrap list: every broker."""
        return ",".join(member.address for member in self.members)

    def start(self) -> None:
        """Until every broker is in the cluster's metadata: a controller or a leader the
        clients do not know yet would fail the first admin calls."""
        super().start()
        wait_until(self._registered, 60, "every broker in the cluster's metadata", step=0.5)

    def _registered(self) -> bool:
        """By librdkafka's admin client: kafka-python's describe_cluster fails at
        api_version 2.8."""
        try:
            metadata = ConfluentAdmin({"bootstrap.servers": self.address}).list_topics(timeout=5)
        except KafkaException:
            return False
        return len(metadata.brokers) == len(self.members)

    def broker(self, node_id: int) -> Kafka:
        return self.members[node_id - 1]

    def followers(self, topic: str) -> list[Kafka]:
        """The brokers that do not lead a topic of one partition."""
        leader = self.leader(topic)
        return [member for i, member in enumerate(self.members) if i + 1 != leader]


def _kafka_cluster_id() -> str:
    """A base64 UUID, as Kafka's storage tool wants it; one that starts with "-" would be
    read as an option."""
    while (cluster_id := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")) \
            .startswith("-"):
        pass
    return cluster_id


class EtcdCluster(Cluster):
    """Three etcd members; an agent is given all three endpoints."""

    def __init__(self, data_dir: Path, size: int = 3) -> None:
        ports = cluster_ports(size)
        initial = ",".join(f"member-{i + 1}=http://127.0.0.1:{port + 1}"
                           for i, port in enumerate(ports))
        self.members = []
        for i, port in enumerate(ports):
            member = Etcd(data_dir / f"member-{i + 1}", port)
            member.env = {"LOCAL_ETCD_NAME": f"member-{i + 1}", "LOCAL_ETCD_CLUSTER": initial}
            self.members.append(member)

    def start(self) -> None:
        super().start()
        wait_until(self._has_leader, 30, "an etcd leader", step=0.2)

    def _has_leader(self) -> bool:
        try:
            with self.members[0].client() as client:
                return bool(client.status().leader)
        except (etcd3.exceptions.Etcd3Exception, grpc.RpcError):
            return False

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]


@dataclass
class Certificates:
    """Throw-away certificates made by openssl into a temp dir (no key is ever committed):
    a CA, a server certificate for 127.0.0.1 and a client certificate it signed, and a
    rogue CA with a client certificate of its own, which no server trusts."""

    directory: Path

    ca = property(lambda self: self.directory / "ca.pem")
    server_cert = property(lambda self: self.directory / "server.pem")
    server_key = property(lambda self: self.directory / "server.key")
    server_keystore = property(lambda self: self.directory / "server-keystore.pem")
    client_cert = property(lambda self: self.directory / "client.pem")
    client_key = property(lambda self: self.directory / "client.key")
    rogue_ca = property(lambda self: self.directory / "rogue-ca.pem")
    rogue_client_cert = property(lambda self: self.directory / "rogue-client.pem")
    rogue_client_key = property(lambda self: self.directory / "rogue-client.key")

    def generate(self) -> "Certificates":
        self.directory.mkdir(parents=True, exist_ok=True)
        for ca in ("ca", "rogue-ca"):
            self._openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                          "-subj", f"/CN=logship test {ca}", "-keyout", self.directory / f"{ca}.key",
                          "-out", self.directory / f"{ca}.pem")
        self._signed("server", "ca", "subjectAltName=IP:127.0.0.1")
        self._signed("client", "ca", "extendedKeyUsage=clientAuth")
        self._signed("rogue-client", "rogue-ca", "extendedKeyUsage=clientAuth")
        self.server_keystore.write_bytes(self.server_key.read_bytes()
                                         + self.server_cert.read_bytes())
        return self

    def _signed(self, name: str, ca: str, extension: str) -> None:
        d = self.directory
        self._openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                      "-keyout", d / f"{name}.key", "-out", d / f"{name}.csr")
        (d / f"{name}.ext").write_text(extension + "\n")
        self._openssl("x509", "-req", "-in", d / f"{name}.csr", "-CA", d / f"{ca}.pem",
                      "-CAkey", d / f"{ca}.key", "-CAcreateserial", "-days", "2",
                      "-extfile", d / f"{name}.ext", "-out", d / f"{name}.pem")

    @staticmethod
    def _openssl(*args) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


SCRAM_USER, SCRAM_PASSWORD = "logship", "scram-secret-4711"
SCRAM_NOBODY, SCRAM_LIMITED = "nobody", "limited"


class SecureKafka(Kafka):
    """A broker with an SSL listener that requires a client certificate and a SASL_SSL
    listener (SCRAM-SHA-512), beside the PLAINTEXT one the tests read through. ACLs are
    on: SCRAM_USER, the client certificate and PLAINTEXT may do anything (super users);
    SCRAM_NOBODY (same password) may do nothing; SCRAM_LIMITED what a test grants it."""

    def __init__(self, data_dir: Path, certificates: Certificates) -> None:
        super().__init__(data_dir)
        self.ssl_port = free_port({self.port, self.port + 1})
        self.sasl_port = free_port({self.port, self.port + 1, self.ssl_port})
        extra = data_dir.with_suffix(".properties")
        extra.write_text(SECURE_PROPERTIES.format(
            port=self.port, controller=self.port + 1, ssl=self.ssl_port, sasl=self.sasl_port,
            keystore=certificates.server_keystore, ca=certificates.ca, scram_user=SCRAM_USER))
        self.env = {"KAFKA_EXTRA_PROPERTIES": str(extra),
                    "KAFKA_SCRAM": " ".join(f"SCRAM-SHA-512=[name={user},password={SCRAM_PASSWORD}]"
                                            for user in (SCRAM_USER, SCRAM_NOBODY,
                                                         SCRAM_LIMITED))}

    def grant(self, *rights: tuple[ResourceType, str, ACLOperation]) -> None:
        """Allow SCRAM_LIMITED each (resource type, literal name, operation)."""
        admin = KafkaAdminClient(bootstrap_servers=self.address, api_version=(2, 8))
        try:
            result = admin.create_acls([
                ACL(f"User:{SCRAM_LIMITED}", "*", operation, ACLPermissionType.ALLOW,
                    ResourcePattern(kind, name)) for kind, name, operation in rights])
        finally:
            admin.close()
        assert not result["failed"], result["failed"]


SECURE_PROPERTIES = """
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller},\
SSL://127.0.0.1:{ssl},SASL_SSL://127.0.0.1:{sasl}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},SSL://127.0.0.1:{ssl},SASL_SSL://127.0.0.1:{sasl}
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL
ssl.keystore.type=PEM
ssl.keystore.location={keystore}
ssl.truststore.type=PEM
ssl.truststore.location={ca}
listener.name.ssl.ssl.client.auth=required
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS;User:CN=client;User:{scram_user}
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required;
"""


class TopicReader:
    """Reads a topic from the beginning and keeps what it read across waits; `committed`:
    as a read_committed consumer, which sees only the records of committed transactions."""

    def __init__(self, kafka: Kafka, topic: str, committed: bool = False) -> None:
        self.topic = topic
        self.records: list = []
        isolation = "read_committed" if committed else "read_uncommitted"
        self._consumer = KafkaConsumer(bootstrap_servers=kafka.address, api_version=(2, 8),
                                       enable_auto_commit=False, group_id=None,
                                       isolation_level=isolation,
                                       fetch_max_bytes=64 * 1024 * 1024,
                                       max_partition_fetch_bytes=32 * 1024 * 1024)
        self._assigned = False

    def _poll(self) -> None:
        if not self._assigned:
            partitions = self._consumer.partitions_for_topic(self.topic)
            if not partitions:
                self._consumer.poll(timeout_ms=50)
                return
            tps = [TopicPartition(self.topic, p) for p in partitions]
            self._consumer.assign(tps)
            self._consumer.seek_to_beginning(*tps)
            self._assigned = True
        for batch in self._consumer.poll(timeout_ms=200, max_records=100000).values():
            self.records.extend(batch)

    def values(self) -> list[bytes]:
        return [r.value for r in self.records]

    def wait_for(self, condition: Callable[[list], object], timeout: float, what: str):
        def check():
            self._poll()
            return condition(self.records)
        return wait_until(check, timeout, f"{what} in topic {self.topic}", 0.0)

    def wait_count(self, count: int, timeout: float = 60.0) -> list:
        self.wait_for(lambda r: len(r) >= count, timeout, f"{count} records")
        return self.records

    def settle(self, quiet: float = 1.0) -> list:
        """Read until nothing new arrived for `quiet` seconds (used to assert absence)."""
        last, changed = len(self.records), time.monotonic()
        while time.monotonic() - changed < quiet:
            self._poll()
            if len(self.records) != last:
                last, changed = len(self.records), time.monotonic()
        return self.records

    def close(self) -> None:
        self._consumer.close()


def header(record, name: str) -> bytes:
    return dict(record.headers)[name]


class Agent:
    """The real `logship run` process with a config written for the test."""

    def __init__(self, workdir: Path, etcd_service: Etcd | list[str], kafka_service: Kafka | str,
                 keys: list[str], client: str = "kafka-python", **sections) -> None:
        self.workdir = workdir
        self.config_path = workdir / "config.yaml"
        self.log_path = workdir / "agent.log"
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, str] | None = None        # None: this process's environment
        endpoints = etcd_service if isinstance(etcd_service, list) else [etcd_service.endpoint]
        servers = kafka_service if isinstance(kafka_service, str) else kafka_service.address
        self.config = {
            "etcd": {"endpoints": endpoints, "keys": keys, "timeout": 2, "probe_interval": 1},
            "kafka": {"bootstrap_servers": servers.split(",")},
            "allowed_paths": [str(workdir) + "/**"],
            "state_dir": str(workdir / "state"),
            "files": {"poll_interval": 0.5, "close_rotated_after": 1.0},
            "metrics": {"listen": f"127.0.0.1:{free_port_pair()}"},
        }
        self.config.update(sections)
        self.config["kafka"].setdefault("client", client)
        self.write_config()

    def write_config(self, config: dict | None = None) -> None:
        self.config = config or self.config
        self.config_path.write_text(yaml.safe_dump(self.config))

    def start(self) -> "Agent":
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "logship", "run", "--config",
                                      str(self.config_path)], stdout=log, stderr=log,
                                     cwd=self.workdir, env=self.env)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 30.0, count: int = 1) -> str:
        regex = re.compile(pattern)

        def found():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            return len(regex.findall(self.log())) >= count
        try:
            wait_until(found, timeout, f"log line /{pattern}/")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- agent log ---\n{self.log()[-6000:]}") from None
        return self.log()

    def stop(self, timeout: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def scrape(self, path: str = "/metrics") -> str:
        with urllib.request.urlopen(f"http://{self.config['metrics']['listen']}{path}") as resp:
            return resp.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value from /metrics (labels in any order); 0 when absent."""
        for family in text_string_to_metric_families(self.scrape()):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return 0.0

    def checkpoints(self) -> list[dict]:
        path = self.workdir / "state" / "checkpoints.json"
        return json.loads(path.read_text())["files"] if path.exists() else []


def numbered(start: int, count: int) -> bytes:
    return b"".join(b"n:%08d\n" % i for i in range(start, start + count))


def numbers(records) -> list[int]:
    return [int(r.value[2:]) for r in records if r.value.startswith(b"n:")]


def has_all(count: int) -> Callable[[list], bool]:
    """A wait condition: every number below `count` was received (checked cheaply)."""
    def check(records) -> bool:
        return len(records) >= count and len(set(numbers(records))) >= count
    return check


def report_duplicates(name: str, records) -> int:
    got = numbers(records)
    duplicates = len(got) - len(set(got))
    print(f"\n[{name}] records={len(got)} unique={len(set(got))} duplicates={duplicates}")
    return duplicates


def stat_fields(stat: Path) -> list[str]:
    """The fields of a /proc/PID[/task/TID]/stat file after the command's name, which may
    hold spaces and parentheses: [0] is the state, [11] and [12] the CPU ticks, the last
    the exit status of a process not yet reaped."""
    return stat.read_text().rsplit(")", 1)[1].split()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


JOURNAL_REMOTE = "/usr/lib/systemd/systemd-journal-remote"
BOOT_ID = uuid.uuid4().hex


class Journal:
    """Real journal files without a running journald: systemd-journal-remote writes the
    entries given in journal export format to DIR/x.journal, appending to it. One file
    per directory (journalctl -f -D over several follows one); time only goes forward
    (journal-remote starts a new file when it goes back)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.written = 0
        self._clock = time.time_ns() // 1000

    def write(self, messages: list[bytes], unit: str = "app.service", identifier: str = "app",
              priority: int = 6, hostname: str = "journal-host") -> None:
        export = bytearray()
        for message in messages:
            self._clock += 1
            self.written += 1
            export += (f"__REALTIME_TIMESTAMP={self._clock}\n__MONOTONIC_TIMESTAMP={self.written}\n"
                       f"_BOOT_ID={BOOT_ID}\n_SYSTEMD_UNIT={unit}\nSYSLOG_IDENTIFIER={identifier}\n"
                       f"PRIORITY={priority}\n_HOSTNAME={hostname}\n").encode()
            export += b"MESSAGE=" + message + b"\n\n" if b"\n" not in message else \
                b"MESSAGE\n" + len(message).to_bytes(8, "little") + message + b"\n\n"
        subprocess.run([JOURNAL_REMOTE, "-o", str(self.directory / "x.journal"), "-"],
                       input=bytes(export), check=True, capture_output=True)

    def write_numbered(self, start: int, count: int, **fields) -> None:
        """n:%08d messages, in runs of at most 5,000 per journal-remote run."""
        for first in range(start, start + count, 5000):
            last = min(first + 5000, start + count)
            self.write([b"n:%08d" % i for i in range(first, last)], **fields)


def zombies(pid: int) -> list[int]:
    """The children of process `pid` that exited and were not reaped."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += (task / "children").read_text().split()
    found = []
    for child in children:
        try:
            if stat_fields(Path(f"/proc/{child}/stat"))[0] == "Z":
                found.append(int(child))
        except OSError:         # reaped meanwhile
            continue
    return found


def journalctl_children(directory: Path) -> list[int]:
    """The pids of the live journalctl processes reading `directory`, whoever started them."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"journalctl") and \
                f"--directory={directory}".encode() in argv:
            pids.append(int(proc.name))
    return pids
