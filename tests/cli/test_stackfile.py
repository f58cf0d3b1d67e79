"""Compose files -> stack specs (meshkit.cli.stackfile), without agents: every key, errors
that name the file, line and path, interpolation, merging several files, network naming."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from meshkit.cli.composefile import StackError, interpolate
from meshkit.cli.stackfile import FilePlan, Stack, load_stack

LABELS = {"com.docker.stack.namespace": "app", "meshkit.stack": "app"}


def load(
    *texts: str, env: dict[str, str] | None = None, files: dict[str, str] | None = None
) -> Stack:
    sources = [(f"/s/f{i}.yml", textwrap.dedent(t)) for i, t in enumerate(texts)]

    def read(path: str) -> str:
        if files is None or path not in files:
            raise FileNotFoundError(2, "No such file or directory")
        return files[path]

    return load_stack(sources, env or {}, "app", read)


def svc(stack: Stack, name: str) -> dict[str, Any]:
    return next(s for s in stack.services if s["name"] == f"app_{name}")


def error(*texts: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(StackError) as info:
        load(*texts, env=env)
    return str(info.value)


def test_minimal_service_gets_docker_names_labels_and_the_default_network() -> None:
    st = load("""
        version: "3"
        services:
          web:
            command: sleep 1000
    """)
    web = svc(st, "web")
    assert web["command"] == ["sleep", "1000"]
    assert web["networks"] == ["app_default"] and web["labels"] == LABELS
    assert web["replicas"] == 1 and web["mode"] == "replicated"
    [net] = st.networks
    assert (net.key, net.name, net.external) == ("default", "app_default", False)
    assert net.request == {"name": "app_default", "driver": "overlay", "labels": LABELS}
    assert st.warnings == []


def test_every_translated_key() -> None:
    st = load(
        """
        services:
          web:
            entrypoint: ["sh", "-c"]
            command: ["echo hi; sleep 5"]
            environment:
              - A=1
              - FROM_SHELL
              - UNSET_IN_SHELL
            env_file: web.env
            working_dir: /srv
            user: nobody
            stop_grace_period: 1m30s
            stop_signal: SIGTERM
            ports:
              - "8080:80"
              - 9000/udp
              - "7000-7001:70-71"
              - {target: 443, published: 8443, protocol: tcp, mode: host}
            expose: ["5000"]
            healthcheck:
              test: ["CMD", "curl", "-f", "http://localhost/"]
              interval: 10s
              timeout: 2s
              retries: 5
              start_period: 1s
            deploy:
              mode: replicated
              replicas: 3
              endpoint_mode: vip
              labels: {tier: front}
              placement:
                constraints: ["node.role == worker", "node.labels.zone!=b"]
              update_config: {parallelism: 2, delay: 5s, failure_action: rollback,
                              monitor: 10s, max_failure_ratio: 0.5, order: start-first}
              rollback_config: {parallelism: 0, failure_action: continue}
              restart_policy: {condition: on-failure, delay: 2s, max_attempts: 4, window: 1m}
        """,
        env={"FROM_SHELL": "yes"},
        files={"/s/web.env": "# comment\nB=2\nA=overridden\n\n"},
    )
    web = svc(st, "web")
    assert web["command"] == ["sh", "-c", "echo hi; sleep 5"]
    assert web["env"] == ["B=2", "A=1", "FROM_SHELL=yes"]
    assert (web["workdir"], web["user"], web["stop_grace_period"]) == ("/srv", "nobody", 90.0)
    assert [(p["published"], p["target"], p["protocol"], p["mode"]) for p in web["ports"]] == [
        (8080, 80, "tcp", "ingress"),
        (None, 9000, "udp", "ingress"),
        (7000, 70, "tcp", "ingress"),
        (7001, 71, "tcp", "ingress"),
        (8443, 443, "tcp", "host"),
        (None, 5000, "tcp", "ingress"),
    ]
    assert web["health"] == {
        "cmd": "curl -f http://localhost/", "interval": 10.0, "timeout": 2.0, "retries": 5,
        "start_period": 1.0,
    }  # fmt: skip
    assert web["replicas"] == 3 and web["endpoint_mode"] == "vip"
    assert web["labels"] == {"tier": "front", **LABELS}
    assert web["constraints"] == ["node.role==worker", "node.labels.zone!=b"]
    assert web["update"] == {
        "parallelism": 2, "delay": 5.0, "failure_action": "rollback", "monitor": 10.0,
        "max_failure_ratio": 0.5, "order": "start-first",
    }  # fmt: skip
    assert web["rollback"]["parallelism"] == 0
    assert web["rollback"]["failure_action"] == "continue"
    assert web["restart"] == {
        "condition": "on-failure", "delay": 2.0, "max_attempts": 4, "window": 60.0
    }  # fmt: skip


def test_environment_as_a_map_and_global_mode_and_health_forms() -> None:
    st = load("""
        services:
          a:
            command: "sh -c 'sleep 1'"
            environment: {X: 1, Y: true, Z: null, W: ""}
            deploy: {mode: global, endpoint_mode: dnsrr}
            healthcheck: {test: ["CMD-SHELL", "test -e /tmp/ok"]}
          b:
            command: "true"
            healthcheck: {test: "exit 0"}
          c:
            command: "true"
            healthcheck: {disable: true}
          d:
            command: "true"
            healthcheck: {test: ["NONE"]}
    """)
    a = svc(st, "a")
    assert a["command"] == ["sh", "-c", "sleep 1"]
    assert a["env"] == ["X=1", "Y=true", "W="]
    assert a["mode"] == "global" and a["endpoint_mode"] == "dnsrr"
    assert a["health"]["cmd"] == "test -e /tmp/ok"
    assert svc(st, "b")["health"]["cmd"] == "exit 0"
    assert svc(st, "c")["health"] is None and svc(st, "d")["health"] is None


def test_networks_naming_external_and_default() -> None:
    st = load("""
        services:
          web:
            command: "true"
            networks: [front, shared]
          worker:
            command: "true"
            networks:
              back:
                aliases: [w]
          lone:
            command: "true"
        networks:
          front:
            labels: [team=a]
            ipam: {config: [{subnet: 198.18.7.0/24}]}
          back:
            driver: overlay
            internal: true
          shared:
            external: true
          named:
            name: exact_name
    """)
    by_key = {n.key: n for n in st.networks}
    assert set(by_key) == {"front", "back", "shared", "default"}  # `named` is used by none
    assert by_key["front"].request == {
        "name": "app_front", "driver": "overlay", "subnet": "198.18.7.0/24",
        "labels": {"team": "a", **LABELS},
    }  # fmt: skip
    assert by_key["back"].request["internal"] is True
    assert by_key["shared"].external and by_key["shared"].name == "shared"
    assert svc(st, "web")["networks"] == ["app_front", "shared"]
    assert svc(st, "worker")["networks"] == ["app_back"]
    assert svc(st, "lone")["networks"] == ["app_default"]
    assert any("services.worker.networks.back.aliases: ignored" in w for w in st.warnings)


def test_image_is_ignored_with_a_command_and_refused_without() -> None:
    st = load("""
        services:
          web:
            image: nginx:1.25
            x-meshkit-command: ["sleep", "9"]
            command: nginx -g daemon-off
    """)
    assert svc(st, "web")["command"] == ["sleep", "9"]  # x-meshkit-command wins
    assert st.warnings == [
        "/s/f0.yml:4: services.web.image: ignored: meshkit runs the service's command as a process"
    ]
    msg = error("""
        services:
          web:
            image: nginx
    """)
    assert msg.startswith("/s/f0.yml:4: services.web.image: meshkit runs processes")


@pytest.mark.parametrize(
    ("body", "where", "says"),
    [
        ("cap_ad: [NET_ADMIN]", "services.web.cap_ad", "unknown key"),
        ("deploy: {replica: 2}", "services.web.deploy.replica", "unknown key"),
        ("deploy: {resources: {limits: {memory: lots}}}",
         "services.web.deploy.resources.limits.memory", "expected a size"),
        ("volumes: ['data:/data']", "services.web.volumes.0", "undefined volume 'data'"),
        ("volumes: ['/data']", "services.web.volumes.0", "anonymous volumes"),
        ("hostname: '{{.Nope}}'", "services.web.hostname", "unknown placeholder"),
        ("dns: [nope]", "services.web.dns", "not an IP address"),
        ("stop_signal: SIGNOPE", "services.web.stop_signal", "unknown signal"),
        ("sysctls: {a: 1}", "services.web.sysctls", "not supported yet"),
        ("deploy: {mode: global, replicas: 2}", "services.web.deploy.replicas",
         "replicated mode"),
        ("deploy: {mode: both}", "services.web.deploy.mode", "'both' is not one of"),
        ("stop_grace_period: soon", "services.web.stop_grace_period", "invalid duration"),
        ("deploy: {placement: {constraints: ['node.zone==a']}}",
         "services.web.deploy.placement.constraints.0", "unknown key 'node.zone'"),
        ("deploy: {update_config: {order: last}}", "services.web.deploy.update_config.order",
         "'last' is not one of"),
        ("deploy: {rollback_config: {failure_action: rollback}}",
         "services.web.deploy.rollback_config.failure_action", "not one of pause, continue"),
        ("deploy: {restart_policy: {max_attempts: -1}}",
         "services.web.deploy.restart_policy.max_attempts", "must be 0 or more"),
        ("ports: ['99999:80']", "services.web.ports.0", "invalid port"),
        ("ports: [{published: 80}]", "services.web.ports.0", "a port needs a target"),
        ("ports: [{target: 80, mode: direct}]", "services.web.ports.0.mode", "not one of"),
        ("networks: [nowhere]", "services.web.networks.nowhere", "undefined network"),
        ("healthcheck: {interval: 5s}", "services.web.healthcheck", "needs a test"),
        ("environment: ['BAD KEY=1']", "services.web.environment.BAD KEY", "not a variable"),
        ("env_file: missing.env", "services.web.env_file", "cannot read /s/missing.env"),
        ("secrets: db_pw", "services.web.secrets", "expected a list"),
        ("secrets: [{target: x}]", "services.web.secrets.0", "needs a source"),
        ("secrets: [{source: db_pw, mode: 1000}]", "services.web.secrets.0.mode",
         "not a file mode"),
        ("secrets: [{source: db_pw, mode: '9'}]", "services.web.secrets.0.mode",
         "not an octal mode"),
        ("secrets: [{source: db_pw, target: a/b}]", "services.web.secrets.0.target",
         "must be a file name"),
        ("secrets: [{source: db_pw, uid: me}]", "services.web.secrets.0.uid",
         "not a numeric id"),
        ("secrets: [{source: db_pw, mask: 1}]", "services.web.secrets.0.mask", "unknown key"),
        ("configs: [{source: site, target: /a/../b}]", "services.web.configs.0.target",
         "absolute file path"),
        ("configs: [nope]", "services.web.configs.0", "undefined config 'nope'"),
    ],
)  # fmt: skip
def test_errors_name_file_line_service_and_key(body: str, where: str, says: str) -> None:
    text = (
        "services:\n  web:\n    command: sleep 1\n    " + body + "\n"
        "secrets:\n  db_pw: {file: ./pw.txt}\nconfigs:\n  site: {external: true}\n"
    )
    msg = error(text)
    assert msg.startswith("/s/f0.yml:4: " + where + ": "), msg
    assert says in msg, msg


def test_a_secret_that_is_not_declared_is_named() -> None:
    msg = error("services:\n  web:\n    command: 'true'\n    secrets: [nope]\n")
    assert msg.startswith("/s/f0.yml:4: services.web.secrets.0: undefined secret 'nope'")
    assert "declare it under top-level secrets" in msg


def test_secrets_and_configs_short_and_long_forms_with_docker_names() -> None:
    st = load("""
        services:
          web:
            command: x
            secrets:
              - db_pw
              - {source: api_key, target: key, uid: 100, gid: "101", mode: 0400}
              - source: tls
                target: /run/secrets/tls.pem
            configs:
              - site
              - {source: site, target: /etc/web.conf, mode: 0440}
              - {source: other, target: rel.conf}
          worker:
            command: y
            secrets: [db_pw]
        secrets:
          db_pw: {file: ./pw.txt}
          api_key: {external: true}
          tls: {external: {name: shared_tls}}
          spare: {file: /abs/never-used}
        configs:
          site: {file: conf/site.conf, labels: {tier: front}}
          other: {file: o.conf, name: custom_other}
    """)
    web = svc(st, "web")
    mode = 0o444
    assert web["secrets"] == [
        {"source": "app_db_pw", "target": "db_pw", "uid": "0", "gid": "0", "mode": mode},
        {"source": "api_key", "target": "key", "uid": "100", "gid": "101", "mode": 0o400},
        {"source": "shared_tls", "target": "tls.pem", "uid": "0", "gid": "0", "mode": mode},
    ]
    assert web["configs"] == [
        {"source": "app_site", "target": "/run/configs/site", "uid": "0", "gid": "0",
         "mode": mode},
        {"source": "app_site", "target": "/etc/web.conf", "uid": "0", "gid": "0",
         "mode": 0o440},
        {"source": "custom_other", "target": "/run/configs/rel.conf", "uid": "0", "gid": "0",
         "mode": mode},
    ]  # fmt: skip
    assert svc(st, "worker")["secrets"] == [web["secrets"][0]]
    # the used ones are planned, once each; files from the first compose file's folder
    assert st.secrets == [
        FilePlan("secret", "db_pw", "app_db_pw", False, "/s/./pw.txt", LABELS,
                 "/s/f0.yml:18: secrets.db_pw"),
        FilePlan("secret", "api_key", "api_key", True, "", LABELS,
                 "/s/f0.yml:19: secrets.api_key"),
        FilePlan("secret", "tls", "shared_tls", True, "", LABELS, "/s/f0.yml:20: secrets.tls"),
    ]  # fmt: skip
    assert [(c.name, c.file, c.labels) for c in st.configs] == [
        ("app_site", "/s/conf/site.conf", {"tier": "front", **LABELS}),
        ("custom_other", "/s/o.conf", LABELS),
    ]
    assert st.warnings == []
    # a service without secrets has none; a stack without any plans none
    plain = load("services:\n  web: {command: x}\n")
    assert svc(plain, "web")["secrets"] == [] and plain.secrets == plain.configs == []


@pytest.mark.parametrize(
    ("top", "where", "says"),
    [
        ("secrets:\n  s: {external: true, file: ./x}", "secrets.s.file", "external secret has no"),
        ("secrets:\n  s: {}", "secrets.s", "needs file: PATH (or external: true)"),
        ("secrets:\n  s: {file: x, driver: vault}", "secrets.s.driver", "not supported yet"),
        ("secrets:\n  s: {file: x, name: 'bad/name'}", "secrets.s.name", "invalid name"),
        ("secrets:\n  s: {external: yes please}", "secrets.s.external", "expected true"),
        ("secrets:\n  s: {file: x, size: 3}", "secrets.s.size", "unknown key"),
        ("configs:\n  s: {file: x, template_driver: golang}", "configs.s.template_driver",
         "not supported yet"),
    ],
)  # fmt: skip
def test_top_level_secret_and_config_errors(top: str, where: str, says: str) -> None:
    msg = error("services:\n  web: {command: x}\n" + top + "\n")
    assert msg.startswith("/s/f0.yml:4: " + where + ": "), msg
    assert says in msg, msg


def test_a_generated_secret_name_follows_docker_rules() -> None:
    msg = error("services:\n  web: {command: x}\nsecrets:\n  " + "k" * 70 + ": {file: x}\n")
    assert msg.startswith("/s/f0.yml:4: secrets." + "k" * 70 + ": the secret name 'app_kkk")


def test_warned_keys_are_named_by_path_never_dropped_silently() -> None:
    st = load("""
        services:
          web:
            command: "true"
            cap_add: [NET_ADMIN]
            depends_on: [db]
            restart: always
          db:
            command: "true"
    """)
    assert st.warnings == [
        "/s/f0.yml:5: services.web.cap_add: ignored: not supported",
        "/s/f0.yml:6: services.web.depends_on: ignored: not supported",
        "/s/f0.yml:7: services.web.restart: ignored: not supported",
    ]


def test_top_level_errors() -> None:
    assert error("services: {}\nnetwork: {}\n").startswith("/s/f0.yml:2: network: unknown key")
    assert "compose file format 3" in error("version: '2.4'\nservices: {a: {command: x}}\n")
    assert error("services: {}\n").endswith("the stack has no services")
    assert "no command" in error("services:\n  web:\n    environment: {A: 1}\n")
    msg = error("services:\n  web:\n    command: x\n    command: y\n")
    assert msg == "/s/f0.yml:4: services.web.command: duplicate key"
    assert error("services: [\n").startswith("/s/f0.yml:2: not a YAML file")
    msg = error("services:\n  web: {command: x}\nnetworks:\n  n: {driver: bridge}\n")
    assert msg.startswith("/s/f0.yml:4: networks.n.driver: 'bridge'")
    with pytest.raises(StackError, match="invalid stack name"):
        load_stack([("f", "services: {}")], {}, "bad name")
    msg = error("services:\n  " + "x" * 70 + ":\n    command: 'true'\n")
    assert "is not a DNS label" in msg


def test_ports_are_text_not_base_60() -> None:
    st = load("services:\n  web:\n    command: 'true'\n    ports:\n      - 22:22\n")
    assert [(p["published"], p["target"]) for p in svc(st, "web")["ports"]] == [(22, 22)]


def test_interpolation() -> None:
    env = {"A": "x", "EMPTY": ""}
    warns: list[str] = []
    assert interpolate("$A ${A} $${A} ${A:-d} ${NOPE:-d} ${EMPTY:-d} ${EMPTY-d}", env,
                       warns.append) == "x x ${A} x d d "  # fmt: skip
    assert interpolate("${A:+alt}${NOPE:+alt}", env, warns.append) == "alt"
    assert interpolate("${NOPE}!", env, warns.append) == "!"
    assert warns == ["The NOPE variable is not set. Defaulting to a blank string."]
    with pytest.raises(ValueError, match="required variable NOPE is missing a value: say it"):
        interpolate("${NOPE:?say it}", env, warns.append)
    with pytest.raises(ValueError, match="invalid interpolation format"):
        interpolate("${A B}", env, warns.append)

    st = load(
        """
        services:
          web:
            command: ["sleep", "${NAP:-5}"]
            deploy: {replicas: "${N}"}
            ports: ["${PORT:-8080}:80"]
            environment: [LEVEL=$LEVEL]
        """,
        env={"N": "4", "LEVEL": "debug"},
    )
    web = svc(st, "web")
    assert web["command"] == ["sleep", "5"] and web["replicas"] == 4
    assert web["ports"][0]["published"] == 8080 and web["env"] == ["LEVEL=debug"]
    msg = error("services:\n  web:\n    command: ['${MUST:?give MUST}']\n")
    assert msg.startswith("/s/f0.yml:3: services.web.command.0: required variable MUST")
    st = load("services:\n  web:\n    command: ['echo', '$UNSET']\n")
    assert st.warnings == [
        "/s/f0.yml:3: services.web.command.1: The UNSET variable is not set. "
        "Defaulting to a blank string."
    ]


def test_several_files_merge_later_ones_override() -> None:
    base = """
        version: "3.8"
        services:
          web:
            command: sleep 1
            environment: [A=1, B=1]
            ports: ["8080:80"]
            networks: [front]
            deploy:
              replicas: 2
              labels: [a=1]
              update_config: {parallelism: 2, delay: 1s}
          worker:
            command: sleep 2
        networks:
          front: {}
    """
    override = """
        services:
          web:
            command: [sleep, "9"]
            environment: {B: 2, C: 3}
            ports: ["8081:81"]
            networks: [back]
            deploy:
              replicas: 5
              labels: {b: "2"}
              update_config: {delay: 2s}
          extra:
            command: sleep 3
            deploy: {replicas: nope}
        networks:
          back: {}
    """
    msg = error(base, override)  # the error names the file that set the value
    assert msg.startswith("/s/f1.yml:14: services.extra.deploy.replicas: expected a whole")
    st = load(base, override.replace("replicas: nope", "replicas: 1"))
    web = svc(st, "web")
    assert web["command"] == ["sleep", "9"]
    assert web["env"] == ["A=1", "B=2", "C=3"]
    assert [p["published"] for p in web["ports"]] == [8080, 8081]
    assert web["networks"] == ["app_front", "app_back"]
    assert web["replicas"] == 5
    assert web["labels"] == {"a": "1", "b": "2", **LABELS}
    assert (web["update"]["parallelism"], web["update"]["delay"]) == (2, 2.0)
    assert {s["name"] for s in st.services} == {"app_web", "app_worker", "app_extra"}
    assert {n.name for n in st.networks} == {"app_front", "app_back", "app_default"}
