"""Which Docker Engine a Kliko 0.8 caller means: ``run_chain(steps, docker_client)`` passed a
docker-py client; kliko-async talks to the engine itself and needs only its URL."""

from __future__ import annotations

from kliko_async.errors import KlikoError


def engine_url_of(client: object) -> str | None:
    """The Docker Engine URL that ``client`` names: None (the default engine), a URL as given,
    or the engine a docker-py client (Kliko 0.8's ``docker.Client()``) talks to."""
    if client is None or isinstance(client, str):
        return client
    api = getattr(client, "api", client)  # docker.DockerClient wraps an APIClient
    base = getattr(api, "base_url", None)
    if isinstance(base, str) and base.startswith("http+docker://"):
        socket = getattr(getattr(api, "_custom_adapter", None), "socket_path", None)
        return f"unix://{socket}" if isinstance(socket, str) else None
    if isinstance(base, str) and base.startswith("http://"):
        return "tcp://" + base.removeprefix("http://")
    raise KlikoError(
        f"cannot tell which Docker Engine {type(client).__name__!r} talks to (base_url {base!r})",
        where="run_chain(steps, docker_client)",
        hint="Pass the engine's URL instead ('unix:///var/run/docker.sock', 'tcp://host:2375'), "
        "or nothing for DOCKER_HOST or the local socket.",
    )
