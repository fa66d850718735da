"""``meshnode run --config FILE``: a TOML file's values reach a real node, flags override it,
a repeatable flag replaces the file's list, and bad files fail at once with exit status 2."""

import os
import re
import subprocess
import sys

import pytest
from edgehelpers import http, http_address
from meshtest.nodeproc import MESHNODE, ROOT, wait_until

from nodes.cli import build_parser
from nodes.cli.config import ConfigError, read_config, run_parser
from nodes.history.recorder import HistoryRule

EXAMPLE = os.path.join(ROOT, "contrib", "meshnode.toml")


def ready(node):
    """The fields of a node's 'meshnode ready' line."""
    return dict(part.split("=", 1) for part in node.ready_line.split()[2:])


@pytest.fixture
def config_file(tmp_path):
    """config_file(text) writes a TOML file and returns its path."""
    count = iter(range(100))

    def write(text):
        path = tmp_path / f"meshnode{next(count)}.toml"
        path.write_text(text)
        return str(path)

    return write


def run_expecting_failure(*args):
    """meshnode run ARGS that must refuse to start: (exit status, stderr)."""
    result = subprocess.run([sys.executable, MESHNODE, "run", *args], capture_output=True, text=True,
                            timeout=30, check=False)
    assert "meshnode ready" not in result.stdout
    assert "Traceback" not in result.stderr
    return result.returncode, result.stderr


def test_file_values_reach_a_running_node(start_node, config_file):
    a = start_node("a")
    path = config_file(f'name = "fromfile"\nport = 0\nhttp = 0\npeer = "{a.address}"  # one string\n')
    node = start_node("run", "--config", path, exact=True)
    assert ready(node)["name"] == "fromfile"
    assert ready(node)["control"].rsplit(":", 1)[1] != "7400"  # port = 0 picked a free one
    assert node.stats()["name"] == "fromfile"
    assert http("GET", f"http://{http_address(node)}/healthz")[1]["name"] == "fromfile"  # http = 0: an edge
    wait_until(lambda: node.peer_names() == ["a"] and a.peer_names() == ["fromfile"], what="the file's peer")


def test_command_line_flags_override_the_file(start_node, config_file):
    path = config_file('name = "fromfile"\nport = 0\nhttp = 0\n')
    before = start_node("fromcli", "--config", path)  # NodeProcess puts --name before --config
    after = start_node("run", "--config", path, "--name", "fromcli", exact=True)
    for node in (before, after):
        assert ready(node)["name"] == "fromcli"
        assert "http" in ready(node)  # what the command line does not give still comes from the file
    # A flag given with its default value still overrides the file: --name "" is HOSTNAME-PORT.
    default = start_node("run", "--name", "", "--config", path, exact=True)
    assert ready(default)["name"] != "fromfile"
    assert ready(default)["name"].endswith("-" + default.address.rsplit(":", 1)[1])


def test_repeatable_flag_on_the_command_line_replaces_the_files_list(start_node, config_file):
    path = config_file('port = 0\nhttp = 0\nallowed-origin = ["http://file.example"]\n')

    def status(node, origin):
        return http("POST", f"http://{http_address(node)}/pub/x", b"1", {"Origin": origin})[0]

    from_file = start_node("run", "--config", path, exact=True)
    assert status(from_file, "http://file.example") == 200
    assert status(from_file, "http://cli.example") == 403

    replaced = start_node("run", "--config", path, "--allowed-origin", "http://cli.example", exact=True)
    assert status(replaced, "http://cli.example") == 200
    assert status(replaced, "http://file.example") == 403  # not added to the file's list: replaced


@pytest.mark.parametrize("key, suggestion", [("histroy", "history"), ("auth_secret", "auth-secret"),
                                             ("max-payloads", "max-payload")])
def test_unknown_key_is_refused_with_the_closest_flag(config_file, key, suggestion):
    path = config_file(f'port = 0\n{key} = "x"\n')
    code, stderr = run_expecting_failure("--config", path)
    assert code == 2
    expected = f"meshnode run: error: {path}: unknown key '{key}'; did you mean '{suggestion}'?"
    assert stderr.strip().splitlines() == [expected]


@pytest.mark.parametrize("line, message", [
    ("hwm = -1", "hwm: -1 is not a positive integer"),
    ('hwm = "x"', "hwm: invalid positive int value: 'x'"),
    ("hwm = 1.5", "hwm: invalid positive int value: '1.5'"),
    ('log-level = "LOUD"', "log-level: invalid choice: 'LOUD'"),
    ('insecure = "yes"', "insecure: expected true or false"),
    ("hwm = [1, 2]", "hwm: takes one value, not an array"),
    ("heartbeat-pings = 0", "heartbeat-pings: 0 is not a positive integer"),
    ('http = true', "http: expected a string or a number, not a boolean"),
    ("peer = [\"127.0.0.1:1\", {x = 1}]", "peer: expected a string or a number, not a table"),
    ("peer = 5", "peer: node address '5' is not HOST:PORT"),
    ('auth-public-key = "/nonexistent/k.pem"', "auth-public-key: cannot read /nonexistent/k.pem: No such file"),
    ('auth-jwks = ["/nonexistent/k.json"]', "auth-jwks: cannot read /nonexistent/k.json: No such file"),
    ('auth-secret = "short"', "auth-secret: must be at least 32 bytes"),
])
def test_bad_value_is_refused_naming_the_file_and_key(config_file, line, message):
    path = config_file(f"port = 0\n{line}\n")
    code, stderr = run_expecting_failure("--config", path)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1
    assert stderr.startswith(f"meshnode run: error: {path}: {message}")


def test_a_bad_value_is_refused_even_when_a_flag_overrides_it(config_file):
    # The file is checked as a whole: a typo must not hide behind today's command line.
    code, stderr = run_expecting_failure("--config", config_file("port = 0\nhwm = 0\n"), "--hwm", "5")
    assert code == 2 and "hwm: 0 is not a positive integer" in stderr


def test_an_error_found_at_start_names_the_file_too(config_file):
    path = config_file('port = 0\nzk = "127.0.0.1:1"\npeer = ["127.0.0.1:9"]\n')
    code, stderr = run_expecting_failure("--config", path)
    assert code == 1
    assert stderr.strip() == f"meshnode run: use either --zk or --peer, not both (settings from {path} and the " \
                             f"command line)"


def test_toml_syntax_error_names_the_file_and_line(config_file):
    path = config_file('name = "a"\nport = 0\nhttp = 84 00\n')
    code, stderr = run_expecting_failure("--config", path)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"meshnode run: error: {path}: ")
    assert re.search(r"line 3\b", lines[0]), lines[0]


def test_missing_config_file(tmp_path):
    path = str(tmp_path / "absent.toml")
    code, stderr = run_expecting_failure("--config", path, "--port", "0")
    assert code == 2
    assert stderr.strip() == f"meshnode run: error: cannot read config file {path}: No such file or directory"


def test_example_config_is_valid_with_its_commented_keys_too(tmp_path):
    run = run_parser(build_parser())
    values = read_config(EXAMPLE, run)
    assert values["http"] == 8400 and values["peer"] == ["10.0.0.6:7400", "10.0.0.7:7400"]
    for rule in values["history"]:
        HistoryRule(rule)  # checked when the node starts, as for --history
    with open(EXAMPLE) as f:
        text = f.read()
    # Every "# key = value" line, uncommented, must be a valid key and value as well.
    uncommented, count = re.subn(r"(?m)^# ([a-z][a-z-]* = )", r"\1", text)
    assert count >= 10
    for name in set(re.findall(r'"/etc/meshnode/([^"]+)"', uncommented)):  # key files are read at parsing
        (tmp_path / name).write_text("")
    uncommented = uncommented.replace("/etc/meshnode/", f"{tmp_path}/")
    path = tmp_path / "uncommented.toml"
    path.write_text(uncommented)
    everything = read_config(str(path), run)
    assert {"name", "zk", "auth_secret", "allowed_origin", "insecure"} <= set(everything)
    assert all(len(secret.encode()) >= 32 for secret in everything["auth_secret"])


def test_read_config_checks_without_starting_a_node(config_file):
    run = run_parser(build_parser())
    secrets = ["s1" * 16, "s2" * 16]
    assert read_config(config_file(f'peer = "h:1"\nauth-secret = {secrets}\ninsecure = true\n'), run) == {
        "peer": ["h:1"], "auth_secret": secrets, "insecure": True}
    with pytest.raises(ConfigError, match="'config' is a command-line flag only"):
        read_config(config_file('config = "other.toml"\n'), run)
