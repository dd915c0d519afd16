# Local PostgreSQL 15 image (deploy/local-images.sh): Debian's postgresql-15 on the
# debootstrapped base, configured like the official image (POSTGRES_USER, POSTGRES_PASSWORD,
# POSTGRES_DB, PGDATA).
ARG BASE=kos-local/debian:bookworm
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/*
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432/tcp
STOPSIGNAL SIGINT
ENTRYPOINT ["postgres-entrypoint.sh"]
