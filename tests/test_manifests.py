"""
The Kubernetes and OpenFaaS examples, checked against the code they configure.

No cluster runs here, so every manifest, stack file, Dockerfile and README
command is read and cross-checked instead: each setting a manifest gives
lambdarapid is one it reads and passes its own validation, ports and probes
meet, Services find their Deployments, KEDA watches the queue the function
consumes, every file a Dockerfile copies exists and every image a README
builds comes from a stage that exists. (tests/test_container_commands.py runs
the commands those images run.)
"""

from __future__ import annotations

import glob
import importlib.util
import inspect
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import unquote, urlsplit

import yaml
from twisted.trial.unittest import SynchronousTestCase

from lambdarapid import config
from lambdarapid.amqp import parameters
from lambdarapid.config import RapidConfig, ServerConfig, rapid_config, server_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KUBERNETES = os.path.join(ROOT, "examples", "kubernetes")
KIND_LAMBDA = os.path.join(KUBERNETES, "kind-lambda")
KIND_OPENFAAS = os.path.join(KUBERNETES, "kind-openfaas")
#: The Prometheus Operator overlay of kind-lambda.
KIND_LAMBDA_PROMETHEUS = os.path.join(KIND_LAMBDA, "prometheus")
#: YAML files that are kustomize patches (JSON 6902 operations), not objects.
PATCH_FILES = frozenset({"keda-prometheus.yaml"})
#: The metrics listener's health routes (METRICS_PORT).
HEALTH_ROUTES = frozenset({"/healthz", "/readyz"})
ECHO_PY = os.path.join(ROOT, "examples", "echo", "python", "echo.py")
BIN = os.path.dirname(sys.executable)

#: The OpenFaaS watchdog routes lambdarapid serves with ENABLE_OPENFAAS=true.
WATCHDOG_ROUTES = frozenset({"/_/health", "/_/ready"})
#: Where a Lambda base image's /lambda-entrypoint.sh looks for the emulator.
RIE_PATH = "/usr/local/bin/aws-lambda-rie"
#: The image the Lambda Server runs; every other lambdarapid/* image runs the daemon.
SERVER_IMAGE = "lambdarapid/lambda-server"
#: Directories never searched for documentation or Dockerfiles.
SKIPPED_DIRECTORIES = {
    ".git",
    "build",
    "dist",
    "node_modules",
    ".tox",
    ".venv",
    "venv",
    ".mypy_cache",
}


# YAML


def yaml_files(top: str = KUBERNETES) -> list[str]:
    """Every YAML file under C{top}."""
    found = []
    for directory, _, files in os.walk(top):
        found += [
            os.path.join(directory, name) for name in files if name.endswith((".yml", ".yaml"))
        ]
    return sorted(found)


def documents(path: str) -> list[Any]:
    """The YAML documents in C{path}, empty ones left out."""
    with open(path, encoding="utf-8") as stream:
        return [document for document in yaml.safe_load_all(stream) if document is not None]


def kustomization(folder: str) -> dict[str, Any]:
    """The folder's kustomization.yaml."""
    (document,) = documents(os.path.join(folder, "kustomization.yaml"))
    assert isinstance(document, dict)
    return document


def kustomized_objects(folder: str) -> list[dict[str, Any]]:
    """The Kubernetes objects a kustomization lists, in order."""
    objects = []
    for resource in kustomization(folder)["resources"]:
        objects += documents(os.path.join(folder, resource))
    return objects


def find(objects: Sequence[Mapping[str, Any]], kind: str, name: str | None = None) -> list[Any]:
    """The objects of C{kind} (named C{name}, if given)."""
    return [
        o
        for o in objects
        if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)
    ]


def the(objects: Sequence[Mapping[str, Any]], kind: str, name: str) -> Any:
    """The one object of C{kind} named C{name}."""
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def secret_value(objects: Sequence[Mapping[str, Any]], name: str, key: str) -> str:
    """A key of a Secret in C{objects} (stringData, or base64 data)."""
    secret = the(objects, "Secret", name)
    if key in secret.get("stringData", {}):
        value = secret["stringData"][key]
    else:
        import base64

        value = base64.b64decode(secret["data"][key]).decode("utf-8")
    assert isinstance(value, str), f"Secret {name} key {key} is not a string"
    return value


def container_environ(
    container: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]
) -> dict[str, str]:
    """A container's environment as the kubelet would build it, Secrets resolved."""
    environ: dict[str, str] = {}
    for entry in container.get("env", []):
        name = entry["name"]
        if "value" in entry:
            value = entry["value"]
            assert isinstance(value, str), f"env {name}: Kubernetes wants a string, not {value!r}"
        else:
            reference = entry["valueFrom"]["secretKeyRef"]
            value = secret_value(objects, reference["name"], reference["key"])
        environ[name] = value
    return environ


def secret_reference(container: Mapping[str, Any], variable: str) -> tuple[str, str] | None:
    """The (Secret, key) a container's variable comes from, if it does."""
    for entry in container.get("env", []):
        if entry["name"] == variable and "valueFrom" in entry:
            reference = entry["valueFrom"]["secretKeyRef"]
            return reference["name"], reference["key"]
    return None


def pod_spec(deployment: Mapping[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def containers(objects: Sequence[Mapping[str, Any]]) -> Iterator[tuple[Any, Any]]:
    """(Deployment, container) for every container of every Deployment."""
    for deployment in find(objects, "Deployment"):
        for container in pod_spec(deployment)["containers"]:
            yield deployment, container


def image_name(reference: str) -> str:
    """An image reference without its tag."""
    repository, _, last = reference.rpartition("/")
    name = last.split("@")[0].split(":")[0]
    return f"{repository}/{name}" if repository else name


def normalized_image(reference: str) -> str:
    """An image reference with its implicit C{:latest} tag spelled out."""
    last = reference.rsplit("/", 1)[-1]
    return reference if ":" in last or "@" in last else reference + ":latest"


def role(image: str) -> str | None:
    """C{server} for the Lambda Server's image, C{daemon} for other lambdarapid images."""
    name = image_name(image)
    if name == SERVER_IMAGE:
        return "server"
    if name.startswith("lambdarapid/"):
        return "daemon"
    return None


def resolve_port(container: Mapping[str, Any], port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise AssertionError(f"container {container['name']} has no port named {port!r}")


def quantity_mebibytes(quantity: str) -> int:
    """A Kubernetes memory quantity (Mi or Gi) in MiB."""
    match = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
    assert match, f"memory quantity {quantity!r}: use Mi or Gi"
    return int(match.group(1)) * (1024 if match.group(2) == "Gi" else 1)


def broker_container(objects: Sequence[Mapping[str, Any]]) -> Any:
    """The RabbitMQ container of the kind-lambda example."""
    (rabbit,) = pod_spec(the(objects, "Deployment", "rabbitmq"))["containers"]
    return rabbit


def broker_service_ports(objects: Sequence[Mapping[str, Any]], container_port: int) -> set[int]:
    """The RabbitMQ Service's ports that lead to C{container_port} of the broker."""
    rabbit = broker_container(objects)
    service = the(objects, "Service", "rabbitmq")
    return {
        p["port"]
        for p in service["spec"]["ports"]
        if resolve_port(rabbit, p.get("targetPort", p["port"])) == container_port
    }


def broker_credentials(objects: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """The user and password the broker creates at start (its only remote-capable user)."""
    environ = container_environ(broker_container(objects), objects)
    return environ["RABBITMQ_DEFAULT_USER"], environ["RABBITMQ_DEFAULT_PASS"]


# What lambdarapid reads


_ENVIRON_READ = re.compile(
    r"""(?:environ\.get\(\s*|environ\[\s*|_get\(\s*environ,\s*|environ\.setdefault\(\s*)["']([A-Z_][A-Z0-9_]*)["']"""
)


def variables_read(*sources: object) -> set[str]:
    """The environment variable names the given functions or modules read."""
    names: set[str] = set()
    for source in sources:
        names |= set(_ENVIRON_READ.findall(inspect.getsource(source)))  # type: ignore[arg-type]
    return names


def daemon_variables() -> set[str]:
    """Every variable the daemon reads: its settings and the function's identity."""
    return variables_read(config, parameters) | set(config.DAEMON_VARIABLES)


def server_variables() -> set[str]:
    """Every variable the Lambda Server reads."""
    return variables_read(config.server_config, config._amqp_uri, config._with_credentials)


def dockerfile_handler(folder: str) -> str:
    """The handler a Lambda image's CMD gives /lambda-entrypoint.sh (its one argument)."""
    (cmd,) = [
        i for i in dockerfile_instructions(os.path.join(folder, "Dockerfile")) if i.keyword == "CMD"
    ]
    handler = json.loads(cmd.arguments)
    assert isinstance(handler, list) and len(handler) == 1, (
        "/lambda-entrypoint.sh takes exactly one argument, the handler: " + cmd.arguments
    )
    return str(handler[0])


def daemon_config(environ: Mapping[str, str], handler: str) -> RapidConfig:
    """
    The daemon's settings for an image's environment, as the Lambda base image
    runs it: one argument (C{/var/runtime/bootstrap}), the handler in _HANDLER.
    """
    return rapid_config(
        [sys.executable], {**environ, "_HANDLER": handler, "PATH": BIN + os.pathsep + os.defpath}
    )


# Dockerfiles


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    line: int


def dockerfile_instructions(path: str) -> list[Instruction]:
    """A Dockerfile's instructions, continuation lines joined, comments left out."""
    instructions = []
    pending = ""
    first = 0
    with open(path, encoding="utf-8") as stream:
        for number, raw in enumerate(stream, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not pending:
                first = number
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            keyword, _, arguments = (pending + line).partition(" ")
            instructions.append(Instruction(keyword.upper(), arguments.strip(), first))
            pending = ""
    return instructions


def stages(path: str) -> list[str]:
    """The names of a Dockerfile's C{FROM ... AS name} stages."""
    names = []
    for instruction in dockerfile_instructions(path):
        if instruction.keyword == "FROM":
            words = [w for w in instruction.arguments.split() if not w.startswith("--")]
            if len(words) >= 3 and words[1].lower() == "as":
                names.append(words[2])
    return names


def base_images(path: str) -> list[str]:
    """Every C{FROM} image of a Dockerfile, build arguments not expanded."""
    return [
        [w for w in i.arguments.split() if not w.startswith("--")][0]
        for i in dockerfile_instructions(path)
        if i.keyword == "FROM"
    ]


@dataclass(frozen=True)
class Copy:
    stage: int
    flags: Mapping[str, str]
    sources: Sequence[str]
    destination: str
    line: int


def copies(path: str) -> list[Copy]:
    """Every COPY and ADD of a Dockerfile, with its stage's index."""
    found = []
    stage = -1
    for instruction in dockerfile_instructions(path):
        if instruction.keyword == "FROM":
            stage += 1
        if instruction.keyword not in ("COPY", "ADD"):
            continue
        rest = instruction.arguments
        flags = {}
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.lstrip()
        paths = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        found.append(Copy(stage, flags, paths[:-1], paths[-1], instruction.line))
    return found


def dockerfiles() -> list[str]:
    """Every Dockerfile in the repository."""
    found = []
    for directory, subdirectories, files in os.walk(ROOT):
        subdirectories[:] = [
            d
            for d in subdirectories
            if d not in SKIPPED_DIRECTORIES and not d.startswith("_trial_temp")
        ]
        found += [os.path.join(directory, name) for name in files if name == "Dockerfile"]
    return sorted(found)


def markdown_files() -> list[str]:
    """Every Markdown document in the repository."""
    found = []
    for directory, subdirectories, files in os.walk(ROOT):
        subdirectories[:] = [
            d
            for d in subdirectories
            if d not in SKIPPED_DIRECTORIES
            and not d.startswith("_trial_temp")
            and not d.endswith(".egg-info")
        ]
        found += [os.path.join(directory, name) for name in files if name.endswith(".md")]
    return sorted(found)


# Commands in documentation


def command_lines(path: str) -> list[str]:
    """A document's lines with shell continuations joined (and Dockerfile comments opened)."""
    with open(path, encoding="utf-8") as stream:
        text = stream.read()
    lines = []
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        if os.path.basename(path) == "Dockerfile":
            if not line.lstrip().startswith("#"):
                continue
            line = line.lstrip()[1:]
        lines.append(line)
    return lines


def _words(text: str) -> list[str]:
    """Shell words up to the end of the command (a backtick, &&, ;, |)."""
    text = text.split("`")[0]
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    command = []
    for word in words:
        if word in ("&&", "||", ";", "|", "&"):
            break
        command.append(word)
    return command


_VALUE_FLAGS = {
    "-t", "--tag", "-f", "--file", "--target", "--build-arg", "--platform", "--build-context",
    "--label", "--network", "--secret", "--ssh", "-o", "--output", "--progress", "--cache-from",
    "--cache-to",
}  # fmt: skip


@dataclass
class DockerBuild:
    """A C{docker build} command found in a document."""

    document: str
    position: int
    context: str
    dockerfile: str
    target: str | None = None
    tags: list[str] = field(default_factory=list)


def docker_builds(path: str) -> list[DockerBuild]:
    """Every C{docker build} a document shows, its context resolved (repo root first)."""
    builds = []
    for position, line in enumerate(command_lines(path)):
        for match in re.finditer(r"docker\s+(?:buildx\s+)?build\s+(.*)", line):
            words = _words(match.group(1))
            options: dict[str, list[str]] = {}
            positional = []
            index = 0
            while index < len(words):
                word = words[index]
                if word.startswith("--") and "=" in word:
                    name, _, value = word.partition("=")
                    options.setdefault(name, []).append(value)
                elif word in _VALUE_FLAGS and index + 1 < len(words):
                    options.setdefault(word, []).append(words[index + 1])
                    index += 1
                elif not word.startswith("-"):
                    positional.append(word)
                index += 1
            assert positional, f"{path}: docker build without a context: {line.strip()}"
            context = _resolve(path, positional[-1])
            files = options.get("-f", []) + options.get("--file", [])
            file_option = files[-1] if files else None
            dockerfile = (
                _resolve(path, file_option) if file_option else os.path.join(context, "Dockerfile")
            )
            builds.append(
                DockerBuild(
                    document=path,
                    position=position,
                    context=context,
                    dockerfile=dockerfile,
                    target=options["--target"][-1] if "--target" in options else None,
                    tags=[
                        normalized_image(t)
                        for t in options.get("-t", []) + options.get("--tag", [])
                    ],
                )
            )
    return builds


def _resolve(document: str, path: str) -> str:
    """A path a command names: from the repository root, else from the document's folder."""
    for base in (ROOT, os.path.dirname(document)):
        candidate = os.path.normpath(os.path.join(base, path))
        if os.path.exists(candidate):
            return candidate
    raise AssertionError(f"{os.path.relpath(document, ROOT)} names {path}, which does not exist")


def kind_loads(path: str) -> list[tuple[int, str]]:
    """(position, image) for every image a document's C{kind load docker-image} loads."""
    loads = []
    for position, line in enumerate(command_lines(path)):
        for match in re.finditer(r"kind\s+load\s+docker-image\s+(.*)", line):
            words = _words(match.group(1))
            index = 0
            while index < len(words):
                if words[index] in ("--name", "-n", "--nodes"):
                    index += 2
                    continue
                if not words[index].startswith("-"):
                    loads.append((position, normalized_image(words[index])))
                index += 1
    return loads


def first_position(path: str, pattern: str) -> int:
    """The first command line of a document matching C{pattern} (a regex)."""
    for position, line in enumerate(command_lines(path)):
        if re.search(pattern, line):
            return position
    raise AssertionError(f"{os.path.relpath(path, ROOT)} has no line matching {pattern!r}")


def load_module(path: str) -> Any:
    """Import a Python file by path, as a runtime imports a handler's module."""
    spec = importlib.util.spec_from_file_location(f"_checked_{abs(hash(path))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The examples' objects


def kind_lambda_objects() -> list[dict[str, Any]]:
    return kustomized_objects(KIND_LAMBDA)


def lambdarapid_containers(
    objects: Sequence[Mapping[str, Any]], wanted: str
) -> list[tuple[Any, Any]]:
    """(Deployment, container) for every container running the daemon or the server."""
    return [(d, c) for d, c in containers(objects) if role(c["image"]) == wanted]


def function_container(objects: Sequence[Mapping[str, Any]]) -> tuple[Any, Any]:
    """The kind-lambda example's one function: (Deployment, container)."""
    (found,) = lambdarapid_containers(objects, "daemon")
    return found


def stack() -> dict[str, Any]:
    (document,) = documents(os.path.join(KIND_OPENFAAS, "stack.yml"))
    assert isinstance(document, dict)
    return document


class YamlTests(SynchronousTestCase):
    """Every YAML file under examples/kubernetes parses, and is what it claims."""

    def test_every_file_parses(self) -> None:
        """Each YAML file under examples/kubernetes parses with yaml.safe_load_all and holds a document."""
        files = yaml_files()
        self.assertTrue(files)
        for path in files:
            self.assertTrue(documents(path), f"{path} holds no document")

    def test_every_kubernetes_object_is_named(self) -> None:
        """Every Kubernetes object has apiVersion, kind and metadata.name."""
        for path in yaml_files():
            if os.path.basename(path) in {"kustomization.yaml", "stack.yml"} | PATCH_FILES:
                continue
            for document in documents(path):
                where = f"{os.path.relpath(path, ROOT)}: {document.get('kind')}"
                self.assertIsInstance(document.get("apiVersion"), str, where)
                self.assertIsInstance(document.get("kind"), str, where)
                self.assertIsInstance(document.get("metadata", {}).get("name"), str, where)

    def test_kustomization_lists_every_manifest(self) -> None:
        """kind-lambda's kustomization lists files that exist, and every manifest in the folder."""
        listed = kustomization(KIND_LAMBDA)["resources"]
        for resource in listed:
            self.assertTrue(os.path.isfile(os.path.join(KIND_LAMBDA, resource)), resource)
        manifests = {
            os.path.basename(p)
            for p in yaml_files(KIND_LAMBDA)
            if not p.endswith("kustomization.yaml") and os.path.dirname(p) == KIND_LAMBDA
        }
        self.assertEqual(set(listed), manifests)

    def test_namespace_is_declared(self) -> None:
        """The namespace the kustomization puts everything in is one of its objects."""
        namespace = kustomization(KIND_LAMBDA)["namespace"]
        self.assertEqual(len(find(kind_lambda_objects(), "Namespace", namespace)), 1)
        for document in kind_lambda_objects():
            self.assertNotIn("namespace", document["metadata"], "the kustomization sets it")


class VariableCollectionTests(SynchronousTestCase):
    """The variable names the manifest checks compare against are really found in the code."""

    def test_daemon_variables(self) -> None:
        """The daemon's variables include its settings and the function's identity."""
        names = daemon_variables()
        for name in ("PORT", "AMQP_URI", "ENABLE_OPENFAAS", "AWS_LAMBDA_FUNCTION_NAME",
                     "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_REGION",
                     "AMQP_USERNAME", "SHUTDOWN_TIMEOUT"):  # fmt: skip
            self.assertIn(name, names)

    def test_server_variables(self) -> None:
        """The server's variables are its own, not the daemon's."""
        names = server_variables()
        for name in (
            "PORT",
            "AMQP_URI",
            "AMQP_PASSWORD",
            "LOG_LEVEL",
            "AWS_LAMBDA_FUNCTION_TIMEOUT",
        ):
            self.assertIn(name, names)
        for name in ("MAX_CONCURRENCY", "ENABLE_OPENFAAS", "AWS_LAMBDA_FUNCTION_NAME"):
            self.assertNotIn(name, names)


class KindLambdaTests(SynchronousTestCase):
    """The kind-lambda manifests against lambdarapid's configuration."""

    def setUp(self) -> None:
        self.objects = kind_lambda_objects()
        self.deployment, self.container = function_container(self.objects)
        self.environ = container_environ(self.container, self.objects)
        self.config = daemon_config(self.environ, dockerfile_handler(KIND_LAMBDA))

    def test_each_role_is_present(self) -> None:
        """One function Deployment runs the daemon and one runs the Lambda Server."""
        self.assertEqual(len(lambdarapid_containers(self.objects, "daemon")), 1)
        self.assertEqual(len(lambdarapid_containers(self.objects, "server")), 1)

    def test_environment_variables_are_read(self) -> None:
        """Every variable set for a lambdarapid container is one the daemon or the server reads."""
        for wanted, known in (("daemon", daemon_variables()), ("server", server_variables())):
            for _, container in lambdarapid_containers(self.objects, wanted):
                unknown = set(container_environ(container, self.objects)) - known
                self.assertEqual(
                    unknown, set(), f"{container['name']} sets variables {wanted} never reads"
                )

    def test_settings_pass_validation(self) -> None:
        """The containers' settings (Secrets resolved) pass rapid_config and server_config."""
        for _, container in lambdarapid_containers(self.objects, "server"):
            server_config(container_environ(container, self.objects))
        self.assertEqual(self.config.function.name, "echo")
        self.assertIsNotNone(self.config.metrics_port)
        self.assertIsNotNone(self.config.amqp_uri)
        self.assertGreater(self.config.max_concurrency, 1)

    def test_the_image_runs_its_own_entrypoint(self) -> None:
        """The function container keeps the Lambda image's entrypoint and leaves the Runtime API unset."""
        self.assertNotIn("command", self.container)
        self.assertNotIn("args", self.container)
        self.assertNotIn(
            "AWS_LAMBDA_RUNTIME_API", self.environ, "the entrypoint would skip the RIE"
        )

    def test_ports_and_probes(self) -> None:
        """Container ports are PORT and METRICS_PORT; HTTP probes are health routes on METRICS_PORT (or watchdog routes)."""
        for wanted in ("daemon", "server"):
            for _, container in lambdarapid_containers(self.objects, wanted):
                environ = container_environ(container, self.objects)
                settings: RapidConfig | ServerConfig = (
                    self.config if wanted == "daemon" else server_config(environ)
                )
                ports = [p["containerPort"] for p in container.get("ports", [])]
                self.assertEqual(ports, [settings.port, settings.metrics_port], container["name"])
                self.assertIn("readinessProbe", container, container["name"])
                for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                    probe = container.get(kind)
                    if probe is None:
                        continue
                    action = probe.get("httpGet") or probe.get("tcpSocket")
                    self.assertIsNotNone(action, f"{container['name']} {kind}: http or tcp only")
                    port = resolve_port(container, action["port"])
                    if "httpGet" in probe and probe["httpGet"]["path"] in HEALTH_ROUTES:
                        self.assertEqual(port, settings.metrics_port, container["name"])
                    elif "httpGet" in probe:
                        self.assertEqual(wanted, "daemon", "the server has no watchdog routes")
                        self.assertIn(probe["httpGet"]["path"], WATCHDOG_ROUTES)
                        self.assertTrue(self.config.enable_openfaas)
                        self.assertEqual(port, settings.port)
                    else:
                        self.assertEqual(port, settings.port)

    def test_probes_are_the_health_routes(self) -> None:
        """Both containers' liveness is GET /healthz and readiness GET /readyz (a broker outage restarts nothing)."""
        for wanted in ("daemon", "server"):
            for _, container in lambdarapid_containers(self.objects, wanted):
                self.assertEqual(container["livenessProbe"]["httpGet"]["path"], "/healthz")
                self.assertEqual(container["readinessProbe"]["httpGet"]["path"], "/readyz")

    def test_scrape_annotations_name_the_metrics_port(self) -> None:
        """Each lambdarapid pod's prometheus.io annotations name METRICS_PORT and /metrics."""
        for wanted in ("daemon", "server"):
            for deployment, container in lambdarapid_containers(self.objects, wanted):
                environ = container_environ(container, self.objects)
                settings: RapidConfig | ServerConfig = (
                    self.config if wanted == "daemon" else server_config(environ)
                )
                annotations = deployment["spec"]["template"]["metadata"]["annotations"]
                self.assertEqual(annotations["prometheus.io/scrape"], "true")
                self.assertEqual(annotations["prometheus.io/port"], str(settings.metrics_port))
                self.assertEqual(annotations["prometheus.io/path"], "/metrics")

    def test_shutdown_fits_in_the_grace_period(self) -> None:
        """terminationGracePeriodSeconds exceeds SHUTDOWN_TIMEOUT, which covers the function timeout."""
        grace = pod_spec(self.deployment).get("terminationGracePeriodSeconds", 30)
        # A few seconds after the drain for stopping the runtimes (SIGTERM, then SIGKILL).
        self.assertGreaterEqual(grace, self.config.shutdown_timeout + 5)
        self.assertGreaterEqual(self.config.shutdown_timeout, self.config.function.timeout)

    def test_server_outwaits_the_function(self) -> None:
        """The Lambda Server's fail-safe timeout exceeds the function's timeout."""
        ((_, server),) = lambdarapid_containers(self.objects, "server")
        settings = server_config(container_environ(server, self.objects))
        self.assertGreater(settings.timeout, self.config.function.timeout)

    def test_memory_size_is_the_memory_limit(self) -> None:
        """AWS_LAMBDA_FUNCTION_MEMORY_SIZE tells the function the container's memory limit."""
        limit = self.container["resources"]["limits"]["memory"]
        self.assertEqual(self.config.function.memory_size, quantity_mebibytes(limit))

    def test_local_images_are_never_pulled(self) -> None:
        """Images built locally and kind-loaded use imagePullPolicy IfNotPresent or Never."""
        for _, container in containers(self.objects):
            if role(container["image"]):
                self.assertIn(container.get("imagePullPolicy"), ("IfNotPresent", "Never"))

    def test_services_select_deployments(self) -> None:
        """Each Service's selector matches one Deployment's pod labels, and its ports reach a container port."""
        for deployment in find(self.objects, "Deployment"):
            selector = deployment["spec"]["selector"]["matchLabels"]
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            self.assertLessEqual(selector.items(), labels.items(), deployment["metadata"]["name"])
        for service in find(self.objects, "Service"):
            selector = service["spec"]["selector"]
            matched = [
                d
                for d in find(self.objects, "Deployment")
                if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
            ]
            self.assertEqual(len(matched), 1, service["metadata"]["name"])
            pod_containers = pod_spec(matched[0])["containers"]
            declared = {p["containerPort"] for c in pod_containers for p in c.get("ports", [])}
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                resolved = {
                    resolve_port(c, target)
                    for c in pod_containers
                    if isinstance(target, int)
                    or target in {p.get("name") for p in c.get("ports", [])}
                }
                self.assertTrue(
                    resolved and resolved <= declared, f"{service['metadata']['name']} {port}"
                )

    def test_amqp_uri_reaches_rabbitmq(self) -> None:
        """Every AMQP_URI names the RabbitMQ Service's AMQP port with the user the broker creates."""
        namespace = kustomization(KIND_LAMBDA)["namespace"]
        names = {f"rabbitmq{suffix}" for suffix in ("", f".{namespace}", f".{namespace}.svc")}
        names.add(f"rabbitmq.{namespace}.svc.cluster.local")
        for wanted in ("daemon", "server"):
            for _, container in lambdarapid_containers(self.objects, wanted):
                uri = urlsplit(container_environ(container, self.objects)["AMQP_URI"])
                self.assertIn(uri.hostname, names)
                self.assertIn(uri.port or 5672, broker_service_ports(self.objects, 5672))
                self.assertEqual(
                    (unquote(uri.username or ""), unquote(uri.password or "")),
                    broker_credentials(self.objects),
                )
                self.assertNotEqual(uri.username, "guest", "guest may only connect from localhost")
                self.assertIn(unquote(uri.path), ("/", "//"), "the default vhost")


class KedaTests(SynchronousTestCase):
    """The KEDA ScaledObject watches the queue the function consumes."""

    def setUp(self) -> None:
        self.objects = kind_lambda_objects()
        self.deployment, self.container = function_container(self.objects)
        self.environ = container_environ(self.container, self.objects)
        self.config = daemon_config(self.environ, dockerfile_handler(KIND_LAMBDA))
        (self.scaled,) = find(self.objects, "ScaledObject")
        (self.trigger,) = self.scaled["spec"]["triggers"]

    def test_scales_the_function_deployment(self) -> None:
        """The ScaledObject targets the function's Deployment and never scales it to zero."""
        self.assertEqual(
            self.scaled["spec"]["scaleTargetRef"]["name"], self.deployment["metadata"]["name"]
        )
        # The queue is auto-delete: with no consumer it would vanish (404s, nothing to measure).
        self.assertGreaterEqual(self.scaled["spec"].get("minReplicaCount", 0), 1)
        self.assertGreater(
            self.scaled["spec"]["maxReplicaCount"], self.scaled["spec"]["minReplicaCount"]
        )

    def test_queue_is_the_function_name(self) -> None:
        """The rabbitmq trigger measures QueueLength of the queue named after the function."""
        self.assertEqual(self.trigger["type"], "rabbitmq")
        metadata = self.trigger["metadata"]
        self.assertEqual(metadata["mode"], "QueueLength")
        self.assertEqual(metadata["queueName"], self.config.function.name)
        self.assertEqual(metadata["queueName"], self.environ["AWS_LAMBDA_FUNCTION_NAME"])
        self.assertEqual(metadata["vhostName"], "/")

    def test_target_is_a_pods_concurrency(self) -> None:
        """One pod per MAX_CONCURRENCY requests, and a pod prefetches no more than it can start."""
        value = self.trigger["metadata"]["value"]
        self.assertIsInstance(value, str)
        self.assertEqual(int(value), self.config.max_concurrency)
        # Prefetched deliveries wait for their pod even when a new pod is idle.
        self.assertEqual(self.config.amqp_prefetch, self.config.max_concurrency)

    def test_host_is_the_management_api(self) -> None:
        """The host (from the Secret) is the broker's management API, reachable from KEDA's namespace."""
        self.assertEqual(self.trigger["metadata"]["protocol"], "http")
        authentication = the(
            self.objects, "TriggerAuthentication", self.trigger["authenticationRef"]["name"]
        )
        (target,) = authentication["spec"]["secretTargetRef"]
        self.assertEqual(target["parameter"], "host")
        host = urlsplit(secret_value(self.objects, target["name"], target["key"]))
        self.assertEqual(host.scheme, "http")
        self.assertIn(host.port, broker_service_ports(self.objects, 15672))
        self.assertEqual(
            (unquote(host.username or ""), unquote(host.password or "")),
            broker_credentials(self.objects),
        )
        self.assertEqual(host.path, "/", "the vhost is vhostName; KEDA needs the trailing slash")
        # KEDA's operator runs in its own namespace: a bare Service name would not resolve there.
        namespace = kustomization(KIND_LAMBDA)["namespace"]
        self.assertEqual(host.hostname, f"rabbitmq.{namespace}.svc.cluster.local")

    def test_broker_has_the_management_plugin(self) -> None:
        """The RabbitMQ image is the official one with the management plugin KEDA's http protocol needs."""
        (rabbit,) = pod_spec(the(self.objects, "Deployment", "rabbitmq"))["containers"]
        self.assertEqual(rabbit["image"], "rabbitmq:3-management")


class KindOpenFaaSTests(SynchronousTestCase):
    """The OpenFaaS stack file against lambdarapid's configuration."""

    def setUp(self) -> None:
        self.stack = stack()
        self.functions = self.stack["functions"]

    def test_stack_shape(self) -> None:
        """The stack is version 1.0 for the openfaas provider, with a gateway URL."""
        self.assertEqual(str(self.stack["version"]), "1.0")
        self.assertEqual(self.stack["provider"]["name"], "openfaas")
        self.assertIn(urlsplit(self.stack["provider"]["gateway"]).scheme, ("http", "https"))
        self.assertTrue(self.functions)

    def test_functions_are_watchdogs(self) -> None:
        """Each function sets ENABLE_OPENFAAS=true and listens on 8080, as OpenFaaS requires."""
        for name, function in self.functions.items():
            self.assertEqual(function["environment"]["ENABLE_OPENFAAS"], "true", name)
            settings = daemon_config(function["environment"], dockerfile_handler(KIND_OPENFAAS))
            self.assertTrue(settings.enable_openfaas)
            self.assertEqual(settings.port, 8080)
            self.assertEqual(settings.function.name, name)

    def test_environment_is_read_and_valid(self) -> None:
        """Every environment entry is a string lambdarapid reads, and the whole passes rapid_config."""
        known = daemon_variables()
        for name, function in self.functions.items():
            environ = function["environment"]
            for key, value in environ.items():
                self.assertIsInstance(value, str, f"{name}: {key}")
                self.assertIn(key, known, f"{name}: lambdarapid never reads {key}")
            settings = daemon_config(environ, dockerfile_handler(KIND_OPENFAAS))
            self.assertGreaterEqual(settings.shutdown_timeout, settings.function.timeout)
            for value in function.get("labels", {}).values():
                self.assertIsInstance(value, str)

    def test_probe_paths_are_watchdog_routes(self) -> None:
        """The health and ready annotations name the watchdog routes lambdarapid serves."""
        for function in self.functions.values():
            annotations = function["annotations"]
            self.assertEqual(annotations["com.openfaas.health.http.path"], "/_/health")
            self.assertEqual(annotations["com.openfaas.ready.http.path"], "/_/ready")
            self.assertTrue(
                {v for k, v in annotations.items() if k.endswith(".path")} <= WATCHDOG_ROUTES
            )

    def test_readme_deploys_the_stack(self) -> None:
        """The README installs OpenFaaS so kind-loaded images are used, then deploys stack.yml."""
        readme = os.path.join(KIND_OPENFAAS, "README.md")
        with open(readme, encoding="utf-8") as stream:
            text = stream.read()
        installs = [
            line
            for line in command_lines(readme)
            if re.search(r"(arkade install|helm upgrade) openfaas", line)
        ]
        self.assertEqual(len(installs), 2, "arkade and helm")
        for line in installs:
            self.assertIn("faasnetes.imagePullPolicy=IfNotPresent", line)
        deploy = first_position(readme, r"faas-cli deploy -f stack\.yml")
        self.assertLess(first_position(readme, r"kind load docker-image"), deploy)
        self.assertLess(first_position(readme, r"faas-cli login"), deploy)
        self.assertIn("faas-cli invoke echo", text)
        self.assertIn("http://127.0.0.1:8080/function/echo", text)


class FunctionImageTests(SynchronousTestCase):
    """Both examples' function images: a Lambda base image with lambdarapid as its RIE."""

    folders = (KIND_OPENFAAS, KIND_LAMBDA)

    def test_lambda_base_image(self) -> None:
        """The image is built FROM an AWS Lambda base image, whose entrypoint runs aws-lambda-rie."""
        for folder in self.folders:
            (base,) = base_images(os.path.join(folder, "Dockerfile"))
            self.assertTrue(base.startswith("public.ecr.aws/lambda/"), base)

    def test_executable_installed_as_the_rie(self) -> None:
        """lambdarapid's executable is copied, from the file the executable target produces, to aws-lambda-rie."""
        top = os.path.join(ROOT, "Dockerfile")
        executable_stage = stages(top).index("executable")
        produced = {c.destination for c in copies(top) if c.stage == executable_stage}
        for folder in self.folders:
            rie = [
                c for c in copies(os.path.join(folder, "Dockerfile")) if c.destination == RIE_PATH
            ]
            self.assertEqual(len(rie), 1, folder)
            self.assertEqual(rie[0].flags.get("from"), "lambdarapid/executable")
            self.assertEqual(list(rie[0].sources), ["/lambda-rapid"])
            self.assertIn("/lambda-rapid", produced)

    def test_handler_exists(self) -> None:
        """The CMD's handler is a function of a module in the image, which echoes its event."""
        for folder in self.folders:
            module_name, _, function_name = dockerfile_handler(folder).rpartition(".")
            module = load_module(os.path.join(folder, module_name + ".py"))
            self.assertEqual(getattr(module, function_name)({"a": 1}, None), {"a": 1})

    def test_echo_is_the_echo_example(self) -> None:
        """Each echo.py is a copy of examples/echo/python/echo.py."""
        with open(ECHO_PY, encoding="utf-8") as stream:
            original = stream.read()
        for folder in self.folders:
            with open(os.path.join(folder, "echo.py"), encoding="utf-8") as stream:
                self.assertEqual(stream.read(), original, folder)

    def test_readme_builds_and_loads_what_is_deployed(self) -> None:
        """Each README builds (in order) and kind-loads every lambdarapid image its manifests use, and nothing else."""
        used = {
            KIND_LAMBDA: {
                normalized_image(c["image"]) for _, c in containers(kind_lambda_objects())
            },
            KIND_OPENFAAS: {normalized_image(f["image"]) for f in stack()["functions"].values()},
        }
        for folder in self.folders:
            readme = os.path.join(folder, "README.md")
            builds = docker_builds(readme)
            built = {tag: build for build in builds for tag in build.tags}
            loaded = dict((image, position) for position, image in kind_loads(readme))
            local = {image for image in used[folder] if role(image)}
            self.assertTrue(local)
            for image in local:
                self.assertIn(image, built, f"{readme} never builds {image}")
                self.assertIn(image, loaded, f"{readme} never loads {image}")
                self.assertLess(built[image].position, loaded[image])
            self.assertEqual(set(loaded), local, "loaded but unused")
            # The function image: this folder's Dockerfile, after the images it copies from.
            (own,) = [b for b in builds if os.path.normpath(b.context) == folder]
            self.assertEqual(len(own.tags), 1)
            for copy in copies(own.dockerfile):
                source = copy.flags.get("from")
                if source and source not in stages(own.dockerfile):
                    self.assertIn(
                        normalized_image(source), built, f"{readme} never builds {source}"
                    )
                    self.assertLess(built[normalized_image(source)].position, own.position)
                    self.assertEqual(built[normalized_image(source)].target, "executable")

    def test_kind_lambda_readme_order(self) -> None:
        """KEDA is installed before the manifests that use its kinds are applied, and images loaded before that."""
        readme = os.path.join(KIND_LAMBDA, "README.md")
        apply = first_position(readme, r"kubectl apply -k examples/kubernetes/kind-lambda")
        self.assertLess(first_position(readme, r"helm install keda kedacore/keda"), apply)
        self.assertLess(first_position(readme, r"kind load docker-image"), apply)
        self.assertLess(first_position(readme, r"kind create cluster"), apply)


class DockerfileTests(SynchronousTestCase):
    """Every Dockerfile in the repository, and every docker build its documents show."""

    def test_dockerfiles_found(self) -> None:
        """The search finds the top-level Dockerfile and the examples' ones."""
        found = dockerfiles()
        self.assertIn(os.path.join(ROOT, "Dockerfile"), found)
        self.assertIn(os.path.join(KIND_LAMBDA, "Dockerfile"), found)
        self.assertIn(os.path.join(KIND_OPENFAAS, "Dockerfile"), found)

    def test_copy_sources_exist(self) -> None:
        """Every local COPY/ADD source exists in the Dockerfile's build context (its folder)."""
        for path in dockerfiles():
            context = os.path.dirname(path)
            names = stages(path)
            for copy in copies(path):
                source_stage = copy.flags.get("from")
                if source_stage:
                    if source_stage in names:
                        self.assertLess(names.index(source_stage), copy.stage, "a later stage")
                    continue
                for source in copy.sources:
                    if re.match(r"[a-z]+://", source):
                        continue
                    resolved = os.path.normpath(os.path.join(context, source))
                    self.assertTrue(
                        resolved.startswith(context), f"{path}:{copy.line} leaves the context"
                    )
                    self.assertTrue(
                        glob.glob(resolved), f"{path}:{copy.line}: {source} does not exist"
                    )

    def test_docker_build_targets_exist(self) -> None:
        """Every docker build in a document or Dockerfile comment names a Dockerfile and a stage it has."""
        builds = [b for path in markdown_files() + dockerfiles() for b in docker_builds(path)]
        self.assertTrue(any(b.target == "executable" for b in builds))
        for build in builds:
            where = os.path.relpath(build.document, ROOT)
            self.assertTrue(os.path.isfile(build.dockerfile), f"{where}: no {build.dockerfile}")
            if build.target is not None:
                self.assertIn(build.target, stages(build.dockerfile), where)

    def test_parser(self) -> None:
        """The Dockerfile parser joins continuations and reads flags, JSON form and stages."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(
                "# comment\nFROM --platform=linux/amd64 python:3 AS one\n"
                "COPY --chown=1:1 a \\\n  b /dest/\n"
                'FROM one\nCOPY --from=one ["/x y", "/z"]\nCMD ["h.handler"]\n'
            )
        self.assertEqual(stages(path), ["one"])
        self.assertEqual(base_images(path), ["python:3", "one"])
        first, second = copies(path)
        self.assertEqual((first.stage, dict(first.flags), list(first.sources), first.destination),
                         (0, {"chown": "1:1"}, ["a", "b"], "/dest/"))  # fmt: skip
        self.assertEqual(
            (second.stage, second.flags["from"], list(second.sources)), (1, "one", ["/x y"])
        )


def prometheus_overlay() -> tuple[dict[str, Any], list[dict[str, Any]], list[Any]]:
    """The overlay's kustomization, its own objects, and its patches (file, target) applied to nothing yet."""
    overlay = kustomization(KIND_LAMBDA_PROMETHEUS)
    objects: list[dict[str, Any]] = []
    for resource in overlay["resources"]:
        path = os.path.join(KIND_LAMBDA_PROMETHEUS, resource)
        if not os.path.isdir(path):
            objects += documents(path)
    return overlay, objects, overlay.get("patches", [])


class PrometheusOverlayTests(SynchronousTestCase):
    """kind-lambda/prometheus: ServiceMonitors and KEDA's prometheus trigger, against the code."""

    def setUp(self) -> None:
        self.base = kind_lambda_objects()
        self.overlay, self.objects, self.patches = prometheus_overlay()
        self.deployment, self.container = function_container(self.base)
        self.config = daemon_config(
            container_environ(self.container, self.base), dockerfile_handler(KIND_LAMBDA)
        )

    def test_overlay_builds_on_the_example(self) -> None:
        """The overlay's resources are the example itself and files that exist."""
        resources = self.overlay["resources"]
        self.assertIn("..", resources)
        for resource in resources:
            self.assertTrue(os.path.exists(os.path.join(KIND_LAMBDA_PROMETHEUS, resource)), resource)
        listed = {r for r in resources if r != ".."} | {p["path"] for p in self.patches}
        found = {
            os.path.basename(p)
            for p in yaml_files(KIND_LAMBDA_PROMETHEUS)
            if not p.endswith("kustomization.yaml")
        }
        self.assertEqual(listed, found)

    def test_service_monitors_reach_the_metrics_port(self) -> None:
        """Each ServiceMonitor selects one Service whose named port leads to a lambdarapid container's METRICS_PORT."""
        monitors = find(self.objects, "ServiceMonitor")
        self.assertEqual(len(monitors), 2)
        for monitor in monitors:
            selector = monitor["spec"]["selector"]["matchLabels"]
            (service,) = [
                s
                for s in find(self.base, "Service")
                if selector.items() <= s["metadata"].get("labels", {}).items()
            ]
            (endpoint,) = monitor["spec"]["endpoints"]
            self.assertEqual(endpoint["path"], "/metrics")
            (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
            (deployment,) = [
                d
                for d in find(self.base, "Deployment")
                if service["spec"]["selector"].items()
                <= d["spec"]["template"]["metadata"]["labels"].items()
            ]
            (container,) = pod_spec(deployment)["containers"]
            environ = container_environ(container, self.base)
            self.assertEqual(resolve_port(container, port["targetPort"]), int(environ["METRICS_PORT"]))

    def test_keda_prometheus_trigger(self) -> None:
        """The patch swaps the echo ScaledObject's trigger for prometheus: real families, its job, MAX_CONCURRENCY per pod."""
        (patch,) = self.patches
        self.assertEqual(patch["target"]["kind"], "ScaledObject")
        self.assertEqual(patch["target"]["name"], the(self.base, "ScaledObject", "echo")["metadata"]["name"])
        (operations,) = documents(os.path.join(KIND_LAMBDA_PROMETHEUS, patch["path"]))
        (operation,) = operations
        self.assertEqual((operation["op"], operation["path"]), ("replace", "/spec/triggers"))
        (trigger,) = operation["value"]
        self.assertEqual(trigger["type"], "prometheus")
        metadata = trigger["metadata"]
        self.assertNotIn("metricName", metadata, "gone since KEDA 2.12")
        self.assertEqual(urlsplit(metadata["serverAddress"]).scheme, "http")
        self.assertEqual(int(metadata["threshold"]), self.config.max_concurrency)
        query = metadata["query"]
        from lambdarapid.metrics import STATES, DaemonMetrics

        recorder = DaemonMetrics("echo")
        recorder.watch(lambda: 0, lambda: {})
        exported = {
            family.name for family in recorder.registry.collect()
        }
        for name in re.findall(r"(lambdarapid_[a-z_]+)\{", query):
            self.assertIn(name, exported)
        for state in re.findall(r'state="([a-z]+)"', query):
            self.assertIn(state, STATES)
        # The job is the Service the ServiceMonitor scrapes: the Deployment's name.
        self.assertEqual(set(re.findall(r'job="([^"]+)"', query)), {self.deployment["metadata"]["name"]})
