# Local Redis image (deploy/local-images.sh): Debian's redis-server (7.0) on the
# debootstrapped base, run as `redis` with its data in /data like the official image.
ARG BASE=kos-local/debian:bookworm
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o redis -g redis -m 0750 /data
USER redis
WORKDIR /data
VOLUME ["/data"]
EXPOSE 6379/tcp
CMD ["redis-server", "--protected-mode", "no"]
