# syntax=docker/dockerfile:1
# kOS node image, for machines that can pull base images (a registry is reachable):
#
#   docker build -t kos-node .            # or: docker compose build
#
# Two stages: the Rust build (cargo's registry and target directory in BuildKit cache
# mounts, so a rebuild only recompiles what changed), then a slim Debian runtime with the
# `kos` binary, run as the non-root user `kos`.
#
# Machines without a registry build the same runtime image from local material with
# deploy/local-images.sh: it takes the runtime stage below (from the `runtime` line to the
# end) word for word, swapping only the base image and where the binary comes from.
#
# Layout of the runtime image:
#   /usr/local/bin/kos                 the node and its CLI
#   /usr/local/bin/docker-entrypoint.sh  first start: `kos init --profile ${KOS_PROFILE:-federation_node}`
#   /var/lib/kos  (KOS_HOME, a volume) profile, system.env, secrets.env, identity.key,
#                                      auth/token.key, klp/peers.list, state/, data/
# Ports: 7420/tcp the HTTP API (kConfigD), 4001/tcp KLP over TCP, 4001/udp KLP over QUIC.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# Features: postgres is a default; add the server backends the compose file uses.
ARG KOS_FEATURES=""
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kos-node --bin kos ${KOS_FEATURES:+--features "$KOS_FEATURES"} \
    && install -D -m 0755 target/release/kos /out/kos

FROM debian:bookworm-slim AS runtime
# ca-certificates: OIDC discovery and JWKS over https.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 kos \
    && useradd --system --uid 10001 --gid kos --home-dir /var/lib/kos --shell /usr/sbin/nologin kos \
    && install -d -o kos -g kos -m 0700 /var/lib/kos
COPY --from=build /out/kos /usr/local/bin/kos
COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV KOS_HOME=/var/lib/kos \
    KOS_LOG_FORMAT=json
USER kos
WORKDIR /var/lib/kos
VOLUME ["/var/lib/kos"]
# 7420: HTTP API. 4001: KLP (TCP and QUIC).
EXPOSE 7420/tcp 4001/tcp 4001/udp
# `kos health` asks this node's /readyz (the address comes from api.listen).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["kos", "health"]
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["run"]
