"""The shippers measured side by side: a bare kafka-python producer loop, kcat -P -l,
rsyslog imfile -> omkafka (one file, and a wildcard of busy files), and the real
`logship run` on each Kafka client and delivery mode, for one file, one file with
processing, and busy files through one glob. Each returns a Result."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from kafka import KafkaProducer

from benchmarks.common import (AT_LEAST_ONCE, EXACTLY_ONCE, Result, TopicSize, bench_agent,
                               cpu_seconds, link_all, make_file, memory, mode)
from harness import Agent, Etcd, Kafka, wait_until

BENCH = Path(__file__).resolve().parent.parent / "bench.py"
BUSY_FILES, BUSY_LINES = 100, 5000


def bare_loop(address: str, topic: str, path: str) -> None:
    """Run in a child process: the loop an application would write with kafka-python,
    same key and headers as logship, acks=all. Prints its own numbers as JSON."""
    producer = KafkaProducer(bootstrap_servers=address, api_version=(2, 8), acks="all",
                             linger_ms=5, batch_size=256 * 1024)
    producer.send(topic, b"warm-up").get(30)
    key = path.encode()
    cpu, started = time.process_time(), time.perf_counter()
    lines = Path(path).read_bytes().split(b"\n")[:-1]
    offset = 0
    for line in lines:
        producer.send(topic, value=line, key=key,
                      headers=[("path", key), ("host", b"bench"), ("offset", b"%d" % offset)])
        offset += len(line) + 1
    producer.flush()
    print(json.dumps({"lines": len(lines), "seconds": time.perf_counter() - started,
                      "cpu": time.process_time() - cpu,
                      "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
    producer.close()


def bench_bare_loop(kafka: Kafka, path: Path, run: int) -> Result:
    out = subprocess.run([sys.executable, str(BENCH), "--bare-loop", kafka.address,
                          f"bench-bare-{run}", str(path)],
                         check=True, capture_output=True, text=True).stdout
    got = json.loads(out)
    return Result("bare kafka-python producer loop", got["lines"], got["seconds"], got["cpu"],
                  got["rss"])


def bench_kcat(kafka: Kafka, path: Path, lines: int, run: int) -> Result:
    started = time.perf_counter()
    proc = subprocess.Popen(["kcat", "-P", "-q", "-b", kafka.address, "-t", f"bench-kcat-{run}",
                             "-k", str(path), "-H", "host=bench", "-H", f"path={path}",
                             "-X", "enable.idempotence=true", "-X", "acks=all", "-l", str(path)])
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"kcat exited with {proc.returncode}")
    return Result("kcat -P -l (C, librdkafka)", lines, seconds, usage.ru_utime + usage.ru_stime,
                  usage.ru_maxrss * 1024)


RSYSLOG_CONF = """\
global(workDirectory="{work}")
module(load="imfile" mode="inotify")
module(load="omkafka")
template(name="raw" type="string" string="%msg%")
input(type="imfile" file="{path}" tag="bench" ruleset="tokafka")
ruleset(name="tokafka") {{
  action(type="omkafka" broker=["{broker}"] topic="{topic}" template="raw" key="{key}"
         confParam=["queue.buffering.max.messages=10000000", "enable.idempotence=true",
                    "acks=all"])
}}
"""


def bench_rsyslog(kafka: Kafka, path: Path, lines: int, tmp: Path, run: int,
                  label: str = "rsyslog imfile -> omkafka (C, librdkafka)") -> Result:
    """omkafka drops what does not fit librdkafka's queue: the queue is raised to hold all.
    `path` may be a wildcard (imfile's own), the record key is then the file's name."""
    name = f"{run}-busy" if "*" in str(path) else f"{run}"
    work = tmp / f"rsyslog-{name}"
    work.mkdir()
    topic = f"bench-rsyslog-{name}"
    conf = work / "rsyslog.conf"
    key = "%$!metadata!filename%" if "*" in str(path) else str(path)
    conf.write_text(RSYSLOG_CONF.format(work=work, path=path, broker=kafka.address, topic=topic,
                                        key=key))
    size = TopicSize(kafka, topic)
    started = time.perf_counter()
    proc = subprocess.Popen(["rsyslogd", "-n", "-f", str(conf), "-i", str(work / "pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        size.wait_for(lines, 300, "rsyslog to ship every line", step=0.05)
        seconds = time.perf_counter() - started
        return Result(label, lines, seconds, cpu_seconds(proc.pid), memory(proc.pid, "VmHWM"))
    finally:
        proc.terminate()
        proc.wait(30)


def ship_with_logship(etcd: Etcd, kafka: Kafka, workdir: Path, entries: list[dict],
                      client: str, lines: int, topic: str,
                      delivery: str) -> tuple[Agent, float, float]:
    """Start the agent with nothing to do, then give it the entries: returns the agent,
    the seconds until `lines` were acknowledged (committed, at exactly-once), and the CPU
    seconds that took. Counted at the broker, as rsyslog's rows are, until the topic holds
    them all (or, at exactly-once, its committed end is that far): scraping /metrics ten
    times a second cost the agent itself 1 to 3% of a core (0.9 to 1.2 ms a scrape with
    one file, 1.9 to 3.2 with 100), counted as shipping. The agent's own count of
    acknowledged lines then ends the wait, a scrape or two."""
    key = f"{topic}-{client}"
    etcd.put(key, [])
    agent = bench_agent(workdir, etcd, kafka, key, client, delivery).start()
    agent.wait_log(f"key={key} applied 0 entries", 60)
    if delivery == EXACTLY_ONCE:
        agent.wait_log("exactly-once as transactional id", 60)
    size = TopicSize(kafka, topic,
                     "read_committed" if delivery == EXACTLY_ONCE else "read_uncommitted")
    cpu, started = cpu_seconds(agent.proc.pid), time.perf_counter()
    etcd.put(key, entries)
    try:
        size.wait_for(lines, 600, f"{lines} records in {topic}", step=0.05)
        wait_until(lambda: agent.metric("logship_records_sent_total", topic=topic) >= lines, 60,
                   "logship to count every line acknowledged", step=0.1)
    except AssertionError:
        print(agent.log()[-3000:], file=sys.stderr)
        agent.stop()
        raise
    return agent, time.perf_counter() - started, cpu_seconds(agent.proc.pid) - cpu


PROCESSED = {"multiline": {"pattern": "^\\s", "timeout": 0.1}, "include_lines": ["^[0-9]"],
             "exclude_lines": ["ERROR"], "format": "json", "fields": {"service": "bench"}}
"""Entry options that keep every line (each is still matched by the multiline pattern and
both filters, the exclude regex scanning the whole line, and is an event of its own) and
make each record a JSON document: the cost of processing, against the plain entry on the
same client. The file's last event is released after the multiline timeout: a short one
keeps the wait for it out of the rate."""


def make_busy_files(directory: Path, size: int) -> int:
    """BUSY_FILES files of BUSY_LINES lines, all to be shipped at once; returns the lines."""
    directory.mkdir()
    for i in range(BUSY_FILES):
        make_file(directory / f"app-{i:03d}.log", BUSY_LINES, size)
    return BUSY_FILES * BUSY_LINES


def bench_busy_logship(etcd: Etcd, kafka: Kafka, busy: Path, lines: int, client: str,
                       tmp: Path, run: int, delivery: str = AT_LEAST_ONCE) -> Result:
    """The busy files through one glob entry, each followed by a worker of its own."""
    name = f"{client}-busy-{delivery}-{run}"
    topic = f"bench-{name}"
    workdir = tmp / f"logship-{name}"
    link_all(busy, workdir / "logs")
    entries = [{"path": f"{workdir}/logs/*.log", "topic": topic, "read_from": "beginning"}]
    agent, seconds, cpu = ship_with_logship(etcd, kafka, workdir, entries, client, lines, topic,
                                            delivery)
    rss = memory(agent.proc.pid, "VmHWM")
    agent.stop(60)
    return Result(f"logship ({client}{mode(delivery)}, {BUSY_FILES} busy files)", lines,
                  seconds, cpu, rss)


def bench_logship(etcd: Etcd, kafka: Kafka, path: Path, lines: int, client: str,
                  tmp: Path, run: int, options: dict | None = None,
                  delivery: str = AT_LEAST_ONCE) -> Result:
    name = f"{client}-{delivery}-processed-{run}" if options else f"{client}-{delivery}-{run}"
    topic = f"bench-{name}"
    workdir = tmp / f"logship-{name}"       # a state_dir of its own: starts from offset 0
    workdir.mkdir()
    shipped = workdir / path.name
    os.link(path, shipped)
    entries = [{"path": str(shipped), "topic": topic, "read_from": "beginning", **(options or {})}]
    agent, seconds, cpu = ship_with_logship(etcd, kafka, workdir, entries, client, lines, topic,
                                            delivery)
    rss = memory(agent.proc.pid, "VmHWM")
    agent.stop()
    label = f"logship ({client}, multiline + filters + json)" if options \
        else f"logship ({client}{mode(delivery)})"
    return Result(label, lines, seconds, cpu, rss)
