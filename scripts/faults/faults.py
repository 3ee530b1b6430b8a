#!/usr/bin/env python3
"""The fault-injection suite: real `p2pq workload` processes, real faults, every item counted.

Each node is one `p2pq workload` process (a node plus its producer/consumer/caller) in its own
network namespace (p2pqf-<run>-nK), joined by a veth pair (pfK...) to a bridge in a hub
namespace, so that links can be cut in one or both directions (iptables in the node's namespace)
and degraded (iptables' statistic match for random loss, tbf for bandwidth). Without
CAP_NET_ADMIN the signal scenarios run on loopback and the network scenarios are skipped, loudly.

Every run is bounded in time, removes what it created (also after a failure or Ctrl-C; a run
also removes leftovers of earlier runs on start), and ends with `p2pq check` over the logs.
Standard library only. Run as root: `scripts/faults/faults.py --help`.
"""

import argparse
import atexit
import fcntl
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

NS_PREFIX = "p2pqf-"
HUB = NS_PREFIX + "hub"
SUBNET = "10.231.0."
PORT = 7300


def sh(*args, check=True, quiet=False):
    """Runs a command; raises on failure unless check is False."""
    result = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")
    if not quiet and result.returncode != 0:
        print(f"  (ignored) {' '.join(args)}: {result.stderr.strip()}", file=sys.stderr)
    return result


def our_namespaces():
    out = sh("ip", "netns", "list", check=False, quiet=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(NS_PREFIX)]


def remove_namespaces():
    """Removes every namespace of this suite (the veths go with them)."""
    for ns in our_namespaces():
        sh("ip", "netns", "del", ns, check=False, quiet=True)


def netns_available():
    if os.geteuid() != 0:
        return False, "not root"
    probe = NS_PREFIX + "probe"
    result = sh("ip", "netns", "add", probe, check=False, quiet=True)
    if result.returncode != 0:
        return False, result.stderr.strip() or "ip netns add failed"
    sh("ip", "netns", "del", probe, check=False, quiet=True)
    return True, ""


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class Node:
    def __init__(self, cluster, index, name, args):
        self.cluster, self.index, self.name, self.args = cluster, index, name, args
        self.ns = f"{NS_PREFIX}n{index}" if cluster.netns else None
        self.ip = f"{SUBNET}{index}" if cluster.netns else "127.0.0.1"
        self.proc = None
        self.listen = None
        self.operations = None
        self.log = os.path.join(cluster.dir, f"{name}.jsonl")
        self.stopped = False

    def command(self, bootstrap):
        listen = f"{self.ip}:{PORT}" if self.cluster.netns else "127.0.0.1:0"
        cmd = [self.cluster.p2pq, "workload", "--name", self.name, "--log", self.log, "--listen", listen,
               "--metrics", "127.0.0.1:0", "--run-for", str(self.cluster.bound), "--log-level", self.cluster.log_level,
               "--key-file", self.cluster.key]
        for address in bootstrap:
            cmd += ["--bootstrap", address]
        cmd += self.args
        if self.ns:
            cmd = ["ip", "netns", "exec", self.ns] + cmd  # ip execs the command: same pid
        return cmd

    def start(self, bootstrap):
        stderr = open(os.path.join(self.cluster.dir, f"{self.name}.stderr"), "a")
        self.proc = subprocess.Popen(self.command(bootstrap), stdout=subprocess.PIPE, stderr=stderr, text=True)
        deadline = time.time() + 15
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("listening "):
                self.listen = line.split()[1]
            elif line.startswith("operations "):
                self.operations = line.split()[1].replace("http://", "")
                break
        if not self.listen or not self.operations:
            raise RuntimeError(f"{self.name} did not start (see {self.cluster.dir}/{self.name}.stderr)")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signo):
        if self.alive():
            os.kill(self.proc.pid, signo)

    def status(self):
        """The node's /status, or None."""
        if not self.alive():
            return None
        cmd = [self.cluster.p2pq, "status", "--json", "--token-file", self.cluster.key, self.operations]
        if self.ns:
            cmd = ["ip", "netns", "exec", self.ns] + cmd
        try:
            out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=3)
            return json.loads(out.stdout) if out.returncode == 0 else None
        except (subprocess.TimeoutExpired, json.JSONDecodeError):
            return None


class Cluster:
    """The nodes of one run, their namespaces, and the harness's own log."""

    def __init__(self, p2pq, out, netns, bound, log_level):
        self.p2pq, self.netns, self.bound, self.log_level = p2pq, netns, bound, log_level
        self.dir = out
        os.makedirs(out, exist_ok=True)
        self.nodes = []
        self.harness_log = open(os.path.join(out, "harness.jsonl"), "a")
        self.rules = []  # (namespace, iptables args) added, to remove on heal
        self.helpers = []  # processes of the harness's own (delay proxies), ended on teardown
        # Off loopback a node needs a cluster key: one per run.
        self.key = os.path.join(out, "cluster.key")
        if not os.path.exists(self.key):
            sh(p2pq, "keygen", self.key)

    def log(self, op, **fields):
        fields.update({"t": round(time.time(), 6), "node": "harness", "op": op})
        self.harness_log.write(json.dumps(fields) + "\n")
        self.harness_log.flush()

    def add(self, name, args):
        node = Node(self, len(self.nodes) + 1, name, args)
        self.nodes.append(node)
        return node

    def node(self, name):
        return next(n for n in self.nodes if n.name == name)

    def setup_network(self):
        if not self.netns:
            return
        remove_namespaces()
        sh("ip", "netns", "add", HUB)
        sh("ip", "-n", HUB, "link", "add", "pfbr", "type", "bridge")
        sh("ip", "-n", HUB, "link", "set", "pfbr", "up")
        for node in self.nodes:
            self.add_namespace(node)

    def add_namespace(self, node):
        k = node.index
        sh("ip", "netns", "add", node.ns)
        sh("ip", "-n", node.ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", f"pf{k}n", "netns", node.ns, "type", "veth", "peer", "name", f"pf{k}h", "netns", HUB)
        sh("ip", "-n", node.ns, "addr", "add", f"{node.ip}/24", "dev", f"pf{k}n")
        sh("ip", "-n", node.ns, "link", "set", f"pf{k}n", "up")
        sh("ip", "-n", HUB, "link", "set", f"pf{k}h", "master", "pfbr")
        sh("ip", "-n", HUB, "link", "set", f"pf{k}h", "up")

    def start(self, node, bootstrap=None):
        if bootstrap is None:
            bootstrap = [n.listen for n in self.nodes if n is not node and n.alive()][:3]
        node.start(bootstrap)
        self.log("started", target=node.name, pid=node.proc.pid)

    def start_all(self):
        for node in self.nodes:
            self.start(node)
        self.wait_connected(timeout=20)

    def live(self):
        return [n for n in self.nodes if n.alive()]

    def connected_view(self):
        """For each live node: how many distinct peers it sees connected and alive."""
        view = {}
        for node in self.live():
            status = node.status()
            if status is None:
                view[node.name] = -1
                continue
            peers = {p.get("peerID") for p in status.get("peers", [])
                     if p.get("state") == "connected" and p.get("member") == "alive" and p.get("peerID")}
            view[node.name] = len(peers)
        return view

    def wait_connected(self, timeout):
        """Seconds until every live node sees all the others connected and alive, or None."""
        start = time.time()
        while time.time() - start < timeout:
            want = len(self.live()) - 1
            view = self.connected_view()
            if view and all(v >= want for v in view.values()):
                return time.time() - start
            time.sleep(0.25)
        print(f"  membership did not converge within {timeout} s: {self.connected_view()}", file=sys.stderr)
        return None

    def fault(self, kind, target, **extra):
        print(f"  fault: {kind} {target}", flush=True)
        self.log("fault", kind=kind, target=target, **extra)

    def kill(self, name, signo=signal.SIGKILL, kind="sigkill"):
        node = self.node(name)
        self.fault(kind, name)
        node.signal(signo)

    def iptables(self, node, *args):
        sh("ip", "netns", "exec", node.ns, "iptables", *args)
        self.rules.append((node, args))

    def cut(self, a, b, both=True):
        """Drops a's packets to b (and b's to a when both)."""
        self.iptables(a, "-A", "OUTPUT", "-d", b.ip, "-j", "DROP")
        if both:
            self.iptables(b, "-A", "OUTPUT", "-d", a.ip, "-j", "DROP")

    def heal(self):
        for node in {n for n, _ in self.rules}:
            sh("ip", "netns", "exec", node.ns, "iptables", "-F", check=False)
        for node in self.nodes:
            if node.ns:
                sh("ip", "netns", "exec", node.ns, "tc", "qdisc", "del", "dev", f"pf{node.index}n", "root",
                   check=False, quiet=True)
        self.rules = []

    def tail_lines(self, node, size=65536):
        try:
            with open(node.log, "rb") as f:
                f.seek(max(0, os.path.getsize(node.log) - size))
                return f.read().splitlines()
        except OSError:
            return []

    def last_pop_time(self):
        latest = 0.0
        for node in self.nodes:
            for line in self.tail_lines(node):
                if b'"op":"pop"' in line:
                    try:
                        latest = max(latest, json.loads(line)["t"])
                    except (ValueError, KeyError):
                        pass  # the first, partial line of the tail
        return latest

    def producing(self):
        """Live producers that have not logged the end of their production yet."""
        return [n for n in self.live() if "--produce-rate" in n.args
                and not any(b'"op":"produced"' in line for line in self.tail_lines(n, 4096))]

    def queued(self):
        """Items the live nodes report queued locally (None if a node does not answer)."""
        total = 0
        for node in self.live():
            status = node.status()
            if status is None:
                return None
            total += sum(q.get("localCount", 0) for q in status.get("queues", []) if q.get("name") == "faults")
        return total

    def drain(self, quiet=6.0, limit=60.0):
        """Waits for the producers to finish, then until no node holds an item and nothing was
        popped for `quiet` seconds (bounded by `limit`): whatever is still owed then is lost."""
        # A producer held back by a queue that no longer drains never finishes: bounded.
        deadline = time.time() + limit
        while self.producing() and time.time() < deadline:
            time.sleep(0.5)
        start = time.time()
        while time.time() - start < limit:
            last = self.last_pop_time()
            if time.time() - max(last, start) >= quiet and self.queued() == 0:
                return
            time.sleep(1)
        left = self.queued()
        print(f"  drain: still {left} items queued after {limit} s", file=sys.stderr)
        self.log("measure", name="queued_at_end", value=left if left is not None else -1)

    def stop_all(self):
        for node in self.nodes:
            node.signal(signal.SIGCONT)
        # Each node's counters as it ends (re-queues, stale copies dropped, custody checks...):
        # what a failed run is read with, beside the logs.
        for node in self.live():
            status = node.status()
            if status is not None:
                with open(os.path.join(self.dir, f"{node.name}.status.json"), "w") as f:
                    json.dump(status, f, indent=1, sort_keys=True)
        for node in self.nodes:
            node.signal(signal.SIGTERM)
        deadline = time.time() + 15
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                print(f"  {node.name} did not leave within 15 s of SIGTERM: SIGKILL", file=sys.stderr)
                node.proc.kill()
                node.proc.wait()

    def ensure_network(self):
        """Nothing: the first call (through _LazyNetwork) sets the namespaces up."""

    def teardown(self):
        for p in self.helpers:
            if p.poll() is None:
                p.kill()
                p.wait()
        for node in self.nodes:
            if node.alive():
                node.proc.kill()
                node.proc.wait()
        if self.netns:
            remove_namespaces()
        self.harness_log.close()

    def check(self, max_duplicate_percent=None):
        logs = [os.path.join(self.dir, f) for f in sorted(os.listdir(self.dir)) if f.endswith(".jsonl")]
        cmd = [self.p2pq, "check"] + logs
        if max_duplicate_percent is not None:
            cmd += ["--max-duplicate-percent", str(max_duplicate_percent)]
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        print(result.stderr.rstrip())
        try:
            return json.loads(result.stdout), result.returncode
        except json.JSONDecodeError:
            return {"error": result.stdout + result.stderr}, 3


# Roles. Producers push 64 B items at `rate` a second; consumers pop up to 16 at a time and
# "work" 1 ms per pop, or slowly, so that items wait on them (holders).
def producer(rate, seconds, batch=50, extra=()):
    return ["--produce-rate", str(rate), "--produce-for", str(seconds), "--produce-batch", str(batch), *extra]


def consumer(batch=16, work_ms=1, after=0):
    return ["--consume", "--consume-batch", str(batch), "--consume-work-ms", str(work_ms), "--consume-after", str(after)]


class Scenario:
    """One scenario: builds its cluster, runs its faults, drains, checks."""

    def __init__(self, name, needs_netns, run, promise, expect_dups=None):
        self.name, self.needs_netns, self.run, self.promise = name, needs_netns, run, promise
        self.expect_dups = expect_dups


def s_kill_holder(c, o):
    # As in the pauses: n3 holds thousands of n1's items when it is killed.
    c.add("n1", producer(100_000, 1, batch=500, extra=["--produce-count", str(o.burst)]))
    for i in (2, 3, 4):
        c.add(f"n{i}", consumer(batch=1, work_ms=2))
    c.start_all()
    time.sleep(2)
    c.kill("n3")


def s_kill_owner(c, o):
    # n1 pushes 5,000 items while nobody pops (they stay with their owner), and is killed
    # before the consumers start.
    c.add("n1", producer(100_000, 1, batch=500, extra=["--produce-count", "5000"]))
    for i in (2, 3, 4):
        c.add(f"n{i}", consumer(batch=16, work_ms=1, after=8))
    c.start_all()
    time.sleep(2)
    c.kill("n1")


def s_kill_owner_then_holder(c, o):
    c.add("n1", producer(6000, o.seconds, batch=200))
    for i in (2, 3, 4):
        c.add(f"n{i}", consumer(batch=1, work_ms=5 if i == 3 else 2))
    c.start_all()
    time.sleep(o.seconds / 3)
    c.kill("n1")
    time.sleep(2)
    c.kill("n3")


def s_restart_owner(c, o):
    # n1 pushes 5,000 items while nobody pops (their replicas are with the others), is killed,
    # and a new process with the same identity file starts at once, as a supervisor restarts
    # a crashed node: it links again before any verdict on the old one. The old process's
    # replicas are all that is left of the 5,000.
    identity = os.path.join(c.dir, "n1.identity")
    c.add("n1", producer(100_000, 1, batch=500, extra=["--produce-count", "5000"]) + ["--identity-file", identity])
    for i in (2, 3, 4):
        c.add(f"n{i}", consumer(batch=16, work_ms=1, after=8))
    c.start_all()
    time.sleep(2)
    old = c.node("n1")
    c.kill("n1")
    old.proc.wait()
    # A new name keeps the logs apart; it pushes nothing. Same namespace, same address.
    fresh = c.add("n1r1", ["--identity-file", identity])
    fresh.ns, fresh.ip = old.ns, old.ip
    c.start(fresh)
    c.log("restarted", target="n1", process=fresh.name, pid=fresh.proc.pid)


def s_kill_repeated(c, o):
    c.add("n1", producer(1500, o.seconds + o.kills * 4))
    c.add("n2", producer(1500, o.seconds + o.kills * 4) + consumer())
    for i in (3, 4, 5):
        c.add(f"n{i}", consumer(work_ms=2))
    c.start_all()
    consumers = ["n3", "n4", "n5"]
    generation = 0
    for k in range(o.kills):
        time.sleep(o.seconds / (o.kills + 1))
        victim = c.node(consumers.pop(0))
        c.kill(victim.name)
        victim.proc.wait()
        time.sleep(1)
        # A restarted node is a new workload (a new name keeps item ids unique).
        generation += 1
        fresh = c.add(f"{victim.name.split('r')[0]}r{generation}", victim.args)
        if c.netns:
            c.add_namespace(fresh)
        c.start(fresh)
        consumers.append(fresh.name)


def s_term_holder(c, o):
    # n4 pushes 10,000 items in a burst and holds most of them (slow consumers elsewhere).
    # Nobody pops until after the SIGTERM: n4 still holds all 10,000 when it leaves.
    c.add("n1", consumer(batch=16, work_ms=1, after=8))
    c.add("n2", consumer(batch=16, work_ms=1, after=8))
    c.add("n3", consumer(batch=16, work_ms=1, after=8))
    c.add("n4", producer(100_000, 1, batch=1000, extra=["--produce-count", "10000"]))
    c.start_all()
    time.sleep(2)
    c.kill("n4", signal.SIGTERM, "sigterm")


def s_term_producer(c, o):
    # Faster than the consumers pop: the producer holds a backlog when it leaves.
    c.add("n1", producer(50_000, o.seconds, batch=500))
    for i in (2, 3, 4):
        c.add(f"n{i}", consumer(batch=16, work_ms=1))
    c.start_all()
    time.sleep(o.seconds / 3)
    c.kill("n1", signal.SIGTERM, "sigterm")


def s_term_consumer(c, o):
    c.add("n1", producer(4000, o.seconds, batch=100))
    for i in (2, 3, 4):
        c.add(f"n{i}", consumer(batch=64, work_ms=2))
    c.start_all()
    time.sleep(o.seconds / 3)
    c.kill("n3", signal.SIGTERM, "sigterm")


def sigstop(seconds):
    def run(c, o):
        # A burst that the balancer spreads over three slow consumers: n3 holds thousands of
        # n1's items when it is paused (issue 19's case 6).
        c.add("n1", producer(100_000, 1, batch=500, extra=["--produce-count", str(o.burst)]))
        for i in (2, 3, 4):
            c.add(f"n{i}", consumer(batch=1, work_ms=2))
        c.start_all()
        time.sleep(2)
        c.kill("n3", signal.SIGSTOP, f"sigstop-{seconds}s")
        time.sleep(seconds)
        c.fault(f"sigcont-after-{seconds}s", "n3")
        c.node("n3").signal(signal.SIGCONT)
    return run


def s_stop_owner(c, o):
    # n1 pushes 5,000 items while nobody pops (they stay with their owner, replicated to one
    # peer) and is paused for 10 s. The consumers start during the pause and pop the copies
    # the replica holder re-queued; resumed, n1 must not deliver its originals as well.
    c.add("n1", producer(100_000, 1, batch=500, extra=["--produce-count", "5000"]))
    for i in (2, 3, 4):
        c.add(f"n{i}", consumer(batch=16, work_ms=1, after=6))
    c.start_all()
    time.sleep(2)
    c.kill("n1", signal.SIGSTOP, "sigstop-owner-10s")
    time.sleep(10)
    c.fault("sigcont-owner-after-10s", "n1")
    c.node("n1").signal(signal.SIGCONT)


def partition(shape):
    def run(c, o):
        load = o.seconds / 3 + o.partition + 8
        c.add("n1", producer(2000, load))
        c.add("n2", consumer(work_ms=2))
        c.add("n3", producer(1000, load) + consumer(work_ms=2))
        c.add("n4", consumer(work_ms=3))
        c.start_all()
        time.sleep(o.seconds / 3)
        n = {x.name: x for x in c.nodes}
        if shape == "one":
            for other in ("n1", "n2", "n3"):
                c.cut(n["n4"], n[other])
        elif shape == "halves":
            for a in ("n1", "n2"):
                for b in ("n3", "n4"):
                    c.cut(n[a], n[b])
        else:  # one-way: n1's packets to n4 are dropped, n4's reach n1
            c.cut(n["n1"], n["n4"], both=False)
        c.fault(f"partition-{shape}", "n4" if shape != "halves" else "n1,n2|n3,n4")
        time.sleep(o.partition)
        c.heal()
        c.fault("heal", shape)
        merged = c.wait_connected(timeout=o.merge_bound)
        c.log("measure", name="merge_s", value=merged if merged is not None else -1)
        c.merge_ok = merged is not None  # the promise includes convergence
        print(f"  membership merged after {merged if merged is not None else 'never (bound ' + str(o.merge_bound) + ' s)'}"
              + (" s" if merged is not None else ""))
        # Failure detection must work again: the death of the formerly cut-off node is noticed
        # and what it held re-queued.
        time.sleep(3)
        c.kill("n4")
    return run


def s_loss(c, o):
    c.add("n1", producer(2000, o.seconds))
    c.add("n2", producer(1000, o.seconds) + consumer())
    for i in (3, 4):
        c.add(f"n{i}", consumer(work_ms=2))
    c.start_all()
    c.fault("loss-5%", "all")
    for node in c.nodes:
        c.iptables(node, "-A", "OUTPUT", "-o", f"pf{node.index}n", "-m", "statistic", "--mode", "random",
                   "--probability", "0.05", "-j", "DROP")
    time.sleep(o.seconds * 2 / 3)
    c.heal()
    c.fault("heal", "loss")


def s_bandwidth(c, o):
    c.add("n1", producer(4000, o.seconds, extra=["--payload", "1024"]))
    for i in (2, 3, 4):
        c.add(f"n{i}", consumer(work_ms=1))
    c.start_all()
    c.fault("bandwidth-8mbit", "all")
    for node in c.nodes:
        sh("ip", "netns", "exec", node.ns, "tc", "qdisc", "add", "dev", f"pf{node.index}n", "root", "tbf",
           "rate", "8mbit", "burst", "32kb", "latency", "100ms")
    time.sleep(o.seconds * 2 / 3)
    c.heal()
    c.fault("heal", "bandwidth")


def s_delay(c, o):
    # Every connection a node dials goes through a delaying proxy in its namespace: 50 +- 20 ms
    # each way. Set up before the nodes start: a redirect only catches new connections.
    c.add("n1", producer(2000, o.seconds))
    c.add("n2", producer(1000, o.seconds) + consumer())
    for i in (3, 4):
        c.add(f"n{i}", consumer(work_ms=2))
    c.ensure_network()
    proxy = os.path.join(os.path.dirname(os.path.abspath(__file__)), "delay_proxy.py")
    for node in c.nodes:
        p = subprocess.Popen(["ip", "netns", "exec", node.ns, sys.executable, proxy, "7400", "50", "20", "36",
                              str(c.bound)], stdout=subprocess.PIPE, text=True)
        c.helpers.append(p)
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("the delay proxy did not start")
        c.iptables(node, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", str(PORT), "-m", "mark", "!",
                   "--mark", "36", "-j", "REDIRECT", "--to-ports", "7400")
    c.fault("delay-50ms-20ms", "all")
    c.start_all()
    time.sleep(o.seconds)


def s_caller_death(c, o):
    c.add("n1", ["--serve"])
    c.add("n2", ["--serve"])
    c.add("n3", ["--call-rate", "200", "--call-for", str(o.seconds), "--call-work-ms", "200"])
    c.add("n4", ["--call-rate", "200", "--call-for", str(o.seconds), "--call-work-ms", "200"])
    c.start_all()
    time.sleep(o.seconds / 3)
    c.kill("n3")
    time.sleep(o.seconds * 2 / 3 + 3)
    for name in ("n1", "n2"):
        status = c.node(name).status() or {}
        counters = status.get("counters", {})
        calls = {k: v for k, v in counters.items() if "call" in k}
        print(f"  {name} call counters: {calls}")
        rss = rss_kib(c.node(name).proc.pid)
        if rss:
            c.log("measure", name=f"{name}_rss_mib", value=rss / 1024)


def s_slow_consumer(c, o):
    items, payload = 20_000, 1024
    limits = ["--max-queue-items", str(items), "--payload", str(payload)]
    c.add("n1", producer(50_000, o.seconds, batch=500, extra=limits))
    c.add("n2", consumer(batch=1, work_ms=5) + ["--max-queue-items", str(items)])
    # After the load, a fast consumer drains what is left, so that the count is complete.
    c.add("n3", consumer(batch=256, work_ms=0, after=o.seconds + 2) + ["--max-queue-items", str(items)])
    c.start_all()
    base = {n.name: rss_kib(n.proc.pid) or 0 for n in c.nodes}
    # Each node queues at most `items` items of `payload` bytes (queued plus in flight): allow
    # twice that (the payloads and their transfer buffers), plus 64 MiB, above the idle RSS.
    bound_kib = {name: b + 2 * items * payload // 1024 + 64 * 1024 for name, b in base.items()}
    peak = dict(base)
    end = time.time() + o.seconds
    while time.time() < end:
        for node in c.live():
            peak[node.name] = max(peak[node.name], rss_kib(node.proc.pid) or 0)
        time.sleep(0.5)
    for name in peak:
        c.log("measure", name=f"{name}_peak_rss_mib", value=round(peak[name] / 1024, 1))
        c.log("measure", name=f"{name}_rss_bound_mib", value=round(bound_kib[name] / 1024, 1))
        print(f"  {name}: peak RSS {peak[name] / 1024:.0f} MiB, bound {bound_kib[name] / 1024:.0f} MiB")
    pushed = sum(1 for line in open(c.node("n1").log) if '"op":"push"' in line) * 500
    offered = 50_000 * o.seconds
    c.log("measure", name="pushed_fraction_of_offered", value=round(pushed / offered, 4))
    print(f"  producer got {pushed} of {offered} offered items through: backpressure "
          + ("held it back" if pushed < offered / 2 else "did NOT hold it back"))
    c.memory_ok = all(peak[n] <= bound_kib[n] for n in peak) and pushed < offered / 2


def s_soak(c, o):
    """Steady load, a fault every 30 s (cycling through kill/restart, pause, partition, stop/restart),
    RSS and throughput sampled every 5 s; fails on an upward RSS trend of the long-lived nodes."""
    seconds = o.soak_minutes * 60
    c.add("n1", producer(2000, seconds))
    c.add("n2", producer(1000, seconds) + consumer())
    for i in (3, 4, 5):
        c.add(f"n{i}", consumer(work_ms=2))
    c.start_all()
    consumers = ["n3", "n4", "n5"]
    kinds = ["sigkill", "sigstop", "partition", "sigterm"] if c.netns else ["sigkill", "sigstop", "sigterm"]
    samples = []  # (t, {name: rss MiB}, pops in the window)
    offsets = {}

    def new_pops():
        count = 0
        for node in c.nodes:
            try:
                with open(node.log, "rb") as f:
                    f.seek(offsets.get(node.log, 0))
                    data = f.read()
            except OSError:
                continue
            cut = data.rfind(b"\n") + 1
            offsets[node.log] = offsets.get(node.log, 0) + cut
            for line in data[:cut].splitlines():
                if b'"op":"pop"' in line:
                    count += line.count(b'",') + 1
        return count

    start = time.time()
    next_fault, generation, fault_index = start + 30, 0, 0
    new_pops()
    while time.time() - start < seconds:
        time.sleep(5)
        rss = {n.name: round((rss_kib(n.proc.pid) or 0) / 1024, 1) for n in c.nodes if n.name in ("n1", "n2") and n.alive()}
        pops = new_pops()
        samples.append((round(time.time() - start), rss, pops / 5))
        print(f"  t={samples[-1][0]:>4} s  RSS {rss}  pops/s {pops / 5:.0f}", flush=True)
        c.log("sample", rss_mib=rss, pops_per_s=pops / 5)
        if time.time() >= next_fault and time.time() - start < seconds - 20:
            next_fault += 30
            kind = kinds[fault_index % len(kinds)]
            fault_index += 1
            victim = c.node(consumers[0])
            if kind == "sigstop":
                c.kill(victim.name, signal.SIGSTOP, "sigstop-2s")
                time.sleep(2)
                victim.signal(signal.SIGCONT)
            elif kind == "partition":
                for other in c.live():
                    if other is not victim:
                        c.cut(victim, other)
                c.fault("partition-one", victim.name)
                time.sleep(5)
                c.heal()
                c.fault("heal", "one")
            else:
                consumers.pop(0)
                c.kill(victim.name, signal.SIGKILL if kind == "sigkill" else signal.SIGTERM, kind)
                try:
                    victim.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    victim.proc.kill()
                    victim.proc.wait()
                generation += 1
                fresh = c.add(f"{victim.name.split('r')[0]}r{generation}", victim.args)
                if c.netns:
                    c.add_namespace(fresh)
                c.start(fresh)
                consumers.append(fresh.name)
    # The trend: the long-lived nodes' RSS in the last quarter against the second quarter.
    c.soak_ok = True
    quarter = max(1, len(samples) // 4)
    for name in ("n1", "n2"):
        series = [s[1][name] for s in samples if name in s[1]]
        if len(series) < 4:
            continue
        early = sorted(series[quarter:2 * quarter])[len(series[quarter:2 * quarter]) // 2]
        late = sorted(series[-quarter:])[len(series[-quarter:]) // 2]
        growing = late > early * 1.2 and late - early > 16
        c.log("measure", name=f"{name}_rss_early_mib", value=early)
        c.log("measure", name=f"{name}_rss_late_mib", value=late)
        print(f"  {name}: RSS median {early} MiB (2nd quarter) -> {late} MiB (last quarter): "
              + ("UPWARD TREND" if growing else "flat"))
        if growing:
            c.soak_ok = False
    rates = [s[2] for s in samples]
    if rates:
        c.log("measure", name="pops_per_s_median", value=sorted(rates)[len(rates) // 2])


SCENARIOS = {s.name: s for s in [
    Scenario("kill-holder", False, s_kill_holder, "SIGKILL of a consumer holding items: its items are re-queued by their owner"),
    Scenario("kill-owner", False, s_kill_owner, "SIGKILL of a producer owning queued items: nothing acknowledged is lost"),
    Scenario("kill-owner-then-holder", False, s_kill_owner_then_holder, "SIGKILL of an owner, then of the holder of its items"),
    Scenario("kill-repeated", False, s_kill_repeated, "repeated SIGKILL and restart of consumers while producers run"),
    Scenario("restart-owner", False, s_restart_owner,
             "SIGKILL of an owner with 5,000 queued items, restarted at once with its identity (before any verdict)"),
    Scenario("term-holder", False, s_term_holder, "SIGTERM of a node holding 10,000 items it pushed: it hands them over"),
    Scenario("term-producer", False, s_term_producer, "SIGTERM of a pure producer mid-stream: nothing acknowledged is lost"),
    Scenario("term-consumer", False, s_term_consumer, "SIGTERM of a consumer: nothing lost, no duplicate"),
    Scenario("stop-1", False, sigstop(1), "SIGSTOP of a holder for 1 s, then SIGCONT", 1.0),
    Scenario("stop-2", False, sigstop(2), "SIGSTOP of a holder for 2 s, then SIGCONT", 1.0),
    Scenario("stop-2.5", False, sigstop(2.5), "SIGSTOP of a holder for 2.5 s, then SIGCONT", 1.0),
    Scenario("stop-5", False, sigstop(5), "SIGSTOP of a holder for 5 s, then SIGCONT", 1.0),
    Scenario("stop-30", False, sigstop(30), "SIGSTOP of a holder for 30 s, then SIGCONT", 1.0),
    Scenario("stop-owner", False, s_stop_owner, "SIGSTOP of an owner with 5,000 queued items for 10 s, then SIGCONT", 1.0),
    Scenario("partition-one", True, partition("one"), "one node cut off for 10 s, healed; then killed"),
    Scenario("partition-halves", True, partition("halves"), "the cluster split in halves for 10 s, healed; then a node killed"),
    Scenario("partition-oneway", True, partition("oneway"), "one node's packets to another dropped for 10 s, healed; then killed"),
    Scenario("loss-5", True, s_loss, "5 % random packet loss on every link"),
    Scenario("bandwidth", True, s_bandwidth, "8 Mbit/s per node (tbf), 1 KiB items"),
    Scenario("delay", True, s_delay, "50 +- 20 ms delay each way on every link (a delaying proxy)"),
    Scenario("caller-death", False, s_caller_death, "SIGKILL of a caller with calls in flight; the other caller loses nothing"),
    Scenario("slow-consumer", False, s_slow_consumer, "a slow consumer: RSS under the bound, producers held back"),
    Scenario("soak", False, s_soak, "steady load with a fault every 30 s: nothing lost, RSS flat"),
]}

GROUPS = {
    "sigkill": ["kill-holder", "kill-owner", "kill-owner-then-holder", "kill-repeated", "restart-owner"],
    "sigterm": ["term-holder", "term-producer", "term-consumer"],
    "sigstop": ["stop-1", "stop-2", "stop-2.5", "stop-5", "stop-30", "stop-owner"],
    "partition": ["partition-one", "partition-halves", "partition-oneway"],
    "degraded": ["loss-5", "bandwidth", "delay"],
    "calls": ["caller-death"],
    "memory": ["slow-consumer"],
}
GROUPS["all"] = [s for g in ("sigkill", "sigterm", "sigstop", "partition", "degraded", "calls", "memory") for s in GROUPS[g]]
# The owner's death with its own items still queued: covered by replication.
GROUPS["replication"] = ["kill-owner", "kill-owner-then-holder", "restart-owner", "stop-owner"]
# CI's short suite (about 5 minutes): every scenario short.
GROUPS["ci"] = ["kill-holder", "kill-owner", "kill-owner-then-holder", "restart-owner", "term-holder", "term-producer", "term-consumer",
                "stop-2.5", "stop-owner", "partition-one", "partition-oneway", "loss-5", "caller-death", "slow-consumer"]


def run_scenario(scenario, options, netns_ok, results):
    if scenario.needs_netns and not netns_ok:
        print(f"\n########## SKIPPED {scenario.name}: needs network namespaces (CAP_NET_ADMIN) and iptables; "
              f"none here. THIS SCENARIO DID NOT RUN. ##########\n", flush=True)
        results.append({"scenario": scenario.name, "result": "skipped"})
        return
    out = os.path.join(options.out, scenario.name)
    shutil.rmtree(out, ignore_errors=True)
    cluster = Cluster(options.p2pq, out, netns_ok and not options.loopback, options.bound, options.node_log_level)
    print(f"== {scenario.name}: {scenario.promise} ({'namespaces' if cluster.netns else 'loopback'})", flush=True)
    started = time.time()
    error = None
    try:
        scenario.run(_LazyNetwork(cluster), options)
        cluster.drain(limit=options.drain)
        cluster.stop_all()
    except Exception as e:  # the run failed: still clean up and report what the logs hold
        error = str(e)
        print(f"  harness error: {e}", file=sys.stderr)
    finally:
        cluster.teardown()
    report, code = cluster.check(scenario.expect_dups)
    if (getattr(cluster, "memory_ok", True) is False or getattr(cluster, "soak_ok", True) is False) and code == 0:
        code = 4
    if getattr(cluster, "merge_ok", True) is False and code == 0:
        print("FAIL: membership did not converge after the heal")
        code = 5
    verdict = "pass" if code == 0 and error is None else ("harness-error" if error else "FAIL")
    entry = {"scenario": scenario.name, "result": verdict, "exit": code, "seconds": round(time.time() - started, 1),
             "network": "namespaces" if cluster.netns else "loopback", "error": error,
             **{k: report.get(k) for k in ("pushed", "popped", "lost", "duplicates", "deliveries", "calls",
                                           "callsLost", "callsFailed", "faults", "measures")}}
    results.append(entry)
    with open(os.path.join(options.out, "results.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")
    print(f"== {scenario.name}: {verdict.upper()} in {entry['seconds']} s\n", flush=True)


class _LazyNetwork:
    """Sets the namespaces up once the scenario has added its nodes (on the first start)."""

    def __init__(self, cluster):
        self.__dict__["_c"] = cluster
        self.__dict__["_ready"] = False

    def __getattr__(self, name):
        c = self.__dict__["_c"]
        if name in ("start_all", "start", "ensure_network") and not self.__dict__["_ready"]:
            c.setup_network()
            self.__dict__["_ready"] = True
        return getattr(c, name)

    def __setattr__(self, name, value):
        setattr(self.__dict__["_c"], name, value)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="+", help="scenario or group: " + ", ".join(list(SCENARIOS) + list(GROUPS)))
    parser.add_argument("--p2pq", default=None, help="the p2pq binary (default: .build/release/p2pq)")
    parser.add_argument("--out", default=None, help="directory for the logs (default: a new temporary one)")
    parser.add_argument("--short", action="store_true", help="CI lengths: shorter runs, fewer kills")
    parser.add_argument("--seconds", type=float, default=None, help="load seconds per scenario")
    parser.add_argument("--loopback", action="store_true", help="no namespaces: network scenarios are skipped")
    parser.add_argument("--runs", type=int, default=1, help="repeat each scenario")
    parser.add_argument("--node-log-level", default="notice", choices=["trace", "debug", "info", "notice", "warning", "error"],
                        help="the nodes' --log-level (their stderr is kept in the run's directory)")
    parser.add_argument("--soak-minutes", type=float, default=10, help="length of the soak (not in CI)")
    options = parser.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    options.p2pq = os.path.abspath(options.p2pq or os.path.join(repo, ".build", "release", "p2pq"))
    if not os.access(options.p2pq, os.X_OK):
        sys.exit(f"no p2pq binary at {options.p2pq}: swift build -c release --product p2pq")
    options.out = options.out or tempfile.mkdtemp(prefix="p2pq-faults-")
    options.seconds = options.seconds or (9 if options.short else 20)
    options.kills = 2 if options.short else 5
    options.burst = 12_000 if options.short else 20_000
    options.partition = 10
    options.merge_bound = 20 if options.short else 60
    options.drain = 30 if options.short else 60  # a bound: a drain ends once nothing is queued
    # No workload process outlives this, whatever happens to the harness.
    options.bound = 300 if "soak" not in options.scenarios else int(options.soak_minutes * 60) + 120

    names = []
    for arg in options.scenarios:
        if arg in GROUPS:
            names += GROUPS[arg]
        elif arg in SCENARIOS:
            names.append(arg)
        else:
            sys.exit(f"unknown scenario '{arg}': " + ", ".join(list(SCENARIOS) + list(GROUPS)))

    netns_ok, why = (False, "--loopback") if options.loopback else netns_available()
    if netns_ok and shutil.which("iptables") is None:
        netns_ok, why = False, "iptables is not installed (Debian: apt-get install iptables)"
    if not netns_ok:
        print(f"\n!!!!!!!!!! network namespaces unavailable ({why}): signal scenarios run on loopback, "
              f"partition and degraded-link scenarios are SKIPPED !!!!!!!!!!\n", flush=True)
    else:
        # One run with namespaces at a time: the names are fixed, and a run removes leftovers.
        lock = open(os.path.join(tempfile.gettempdir(), "p2pq-faults.lock"), "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            sys.exit("another fault-injection run with namespaces is in progress (p2pq-faults.lock)")
        options.lock = lock
        atexit.register(remove_namespaces)
    for signo in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signo, lambda s, f: sys.exit(128 + s))

    results = []
    for name in names:
        for _ in range(options.runs):
            run_scenario(SCENARIOS[name], options, netns_ok, results)
    print(f"logs in {options.out}")
    print(f"{'scenario':24} {'result':14} {'pushed':>8} {'popped':>8} {'lost':>6} {'dups':>6}  recovery / merge")
    for r in results:
        extra = ", ".join(f"{f['kind']} {f['recoverySeconds']:.2f} s" if f.get("recoverySeconds") is not None
                          else f"{f['kind']} never" for f in (r.get("faults") or []))
        extra += "".join(f", {m['name']} {m['value']:.2f}" for m in (r.get("measures") or []))
        print(f"{r['scenario']:24} {r['result']:14} {r.get('pushed') or 0:>8} {r.get('popped') or 0:>8} "
              f"{r.get('lost') or 0:>6} {r.get('duplicates') or 0:>6}  {extra}")
    passed = sum(r["result"] == "pass" for r in results)
    skipped = sum(r["result"] == "skipped" for r in results)
    failed = len(results) - passed - skipped
    print(f"faults: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    sys.exit(0 if failed == 0 else 1)


if __name__ == "__main__":
    main()
