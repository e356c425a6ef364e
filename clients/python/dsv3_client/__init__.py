"""A Python client of dsv3d, for machines with Python but not the C++ build.

    from dsv3_client import Client
    c = Client()                       # the controller and token `dsv3ctl login` saved
    job = c.submit("configs/train_config_nano.json", num_ranks=1)
    c.wait(job["id"])
    for line in c.logs(job["id"], tail=5):
        print(line)
    print(c.metrics(job["id"], ["loss"]))

Connection settings resolve as dsv3ctl's do: the arguments, else $DSV3_CONTROLLER and
$DSV3_TOKEN, else what `dsv3ctl login` saved in $XDG_CONFIG_HOME/dsv3/credentials.json
(~/.config/dsv3/credentials.json), else localhost:50051 without TLS. Messages come back as
dicts in protobuf's JSON mapping, the same as `dsv3ctl --output json`.
"""
import json
import os
import re
import time

import grpc
from google.protobuf import json_format

from dsv3.v1 import controller_pb2 as pb
from dsv3.v1 import controller_pb2_grpc as rpc

__all__ = ["Client", "Dsv3Error", "load_config", "credentials_path"]

DEFAULT_CONTROLLER = "localhost:50051"
ENDED = ("JOB_STATE_COMPLETED", "JOB_STATE_FAILED", "JOB_STATE_CANCELED")


class Dsv3Error(Exception):
    """A refused request: `code` is the gRPC status name, `errors` the config's field errors."""

    def __init__(self, message, code="", errors=()):
        super().__init__(message)
        self.code = code
        self.errors = list(errors)


def credentials_path():
    """Where `dsv3ctl login` keeps controllers and tokens."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.environ.get("HOME", "."), ".config")
    return os.path.join(base, "dsv3", "credentials.json")


def _saved_logins():
    try:
        with open(credentials_path()) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


_COMMENTS = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/', re.S)


def _strip_comments(text):
    return _COMMENTS.sub(lambda m: m.group(0) if m.group(0).startswith('"') else "", text)


def _merge(base, over):
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def load_config(path, _chain=()):
    """A config file as dsv3 reads it: // and /* */ comments, "extends" (a path or a list,
    relative to the file, merged in order: objects key by key, anything else replaced)."""
    path = os.path.abspath(path)
    if path in _chain:
        raise Dsv3Error("/extends: inheritance cycle: " + " -> ".join(_chain + (path,)))
    with open(path) as f:
        doc = json.loads(_strip_comments(f.read()))
    bases = doc.pop("extends", [])
    if isinstance(bases, str):
        bases = [bases]
    merged = {}
    for base in bases:
        _merge(merged, load_config(os.path.join(os.path.dirname(path), base), _chain + (path,)))
    return _merge(merged, doc)


class Client:
    def __init__(self, controller=None, token=None, tls_ca=None, tls=None, timeout=30.0):
        saved = _saved_logins()
        self.controller = controller or os.environ.get("DSV3_CONTROLLER") or saved.get("default") or DEFAULT_CONTROLLER
        login = saved.get("controllers", {}).get(self.controller, {})
        self.token = token or os.environ.get("DSV3_TOKEN") or login.get("token") or ""
        tls_ca = tls_ca or login.get("tls_ca") or ""
        use_tls = bool(tls if tls is not None else (tls_ca or login.get("tls")))
        if use_tls:
            root = open(tls_ca, "rb").read() if tls_ca else None
            self._channel = grpc.secure_channel(self.controller, grpc.ssl_channel_credentials(root_certificates=root))
        else:
            self._channel = grpc.insecure_channel(self.controller)
        self._stub = rpc.ControllerStub(self._channel)
        self.timeout = timeout

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ plumbing
    def _metadata(self):
        return [("authorization", "Bearer " + self.token)] if self.token else []

    def _call(self, method, request, stream=False):
        try:
            call = getattr(self._stub, method)
            if stream:
                return call(request, metadata=self._metadata())
            return call(request, metadata=self._metadata(), timeout=self.timeout)
        except grpc.RpcError as e:
            raise self._error(e) from None

    def _error(self, e):
        code = e.code().name if e.code() else "UNKNOWN"
        if code == "UNAVAILABLE":
            return Dsv3Error("cannot reach the controller at %s (%s)" % (self.controller, e.details()), code)
        return Dsv3Error(e.details() or code, code)

    @staticmethod
    def _dict(message):
        return json_format.MessageToDict(message, preserving_proto_field_name=True)

    # ------------------------------------------------------------------ verbs
    def submit(self, config, name="", num_ranks=1, priority=0, resume_from="", dry_run=False):
        """Submits a config (a file path, or a dict) and returns the job; a refused config
        raises Dsv3Error with the field errors."""
        config_path = ""
        if isinstance(config, (str, os.PathLike)):
            config_path = os.path.abspath(config)
            config = load_config(config)
        req = pb.SubmitJobRequest(config_json=json.dumps(config), name=name, num_ranks=num_ranks, priority=priority,
                                  resume_from=resume_from, dry_run=dry_run, working_dir=os.getcwd(),
                                  config_path=config_path)
        try:
            resp = self._stub.SubmitJob(req, metadata=self._metadata(), timeout=self.timeout)
        except grpc.RpcError as e:
            err = self._error(e)
            # A refused config: its field errors travel typed in the status details.
            for key, value in e.trailing_metadata() or ():
                if key == "grpc-status-details-bin":
                    details = pb.ValidateConfigResponse()
                    details.ParseFromString(value)
                    err.errors = [self._dict(f) for f in details.errors]
            raise err from None
        return self._dict(resp) if dry_run else self._dict(resp.job)

    def status(self, job_id=None, states=(), limit=0):
        """One job (with its history, ranks and evaluations), or the newest jobs."""
        if job_id is not None:
            return self._dict(self._call("GetJob", pb.GetJobRequest(job_id=job_id)))
        req = pb.ListJobsRequest(states=[pb.JobState.Value("JOB_STATE_" + s.upper()) for s in states], limit=limit)
        return self._dict(self._call("ListJobs", req)).get("jobs", [])

    def wait(self, job_id, timeout=None, poll=1.0):
        """Polls until the job ends; returns it."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            job = self.status(job_id)
            if job.get("state") in ENDED:
                return job
            if deadline is not None and time.time() > deadline:
                raise Dsv3Error("job %d has not ended after %g s (state %s)" % (job_id, timeout, job.get("state")),
                                "DEADLINE_EXCEEDED")
            time.sleep(poll)

    def logs(self, job_id, follow=False, rank=None, tail=0):
        """The job's log lines ("[rank] text" when every rank is asked for), as they come."""
        req = pb.StreamLogsRequest(job_id=job_id, follow=follow, tail_lines=tail)
        if rank is not None:
            req.rank = rank
        try:
            for chunk in self._call("StreamLogs", req, stream=True):
                for line in chunk.lines:
                    yield line.text if rank is not None else "[%d] %s" % (line.rank, line.text)
        except grpc.RpcError as e:
            raise self._error(e) from None

    def cancel(self, job_id, reason="", wait=False, timeout=None):
        job = self._dict(self._call("CancelJob", pb.CancelJobRequest(job_id=job_id, reason=reason)).job)
        return self.wait(job_id, timeout=timeout, poll=0.5) if wait else job

    def metrics(self, job_id, names=(), since_step=0, max_points=0):
        """{series name: [(step, value), ...]}"""
        req = pb.GetMetricsRequest(job_id=job_id, names=list(names), since_step=since_step, max_points=max_points)
        resp = self._call("GetMetrics", req)
        return {s.name: [(p.step, p.value) for p in s.points] for s in resp.series}
