# syntax=docker/dockerfile:1
# The groove-destination server and nothing else (the sandbox and the benchmark stay out of the image).
#   docker build -t groove-destination .
# `--target sandbox` builds an image of the fake Groove instead (docker-compose.yaml uses it).
# Needs BuildKit (the default builder of Docker 23+, or podman/buildah): the cache mounts below keep the cargo
# registry and the target directory between builds, so a source change recompiles only this crate, not its
# dependencies.

# The builder's Debian release must match the runtime's (bookworm, glibc 2.36): the binary links glibc
# dynamically. The full image, not -slim, because jemalloc's build needs make.
ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build
# The whole workspace manifest set: cargo resolves the member crates even when building one package. build.rs
# compiles proto/ with protox, so no protoc is needed.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY crates crates
COPY src src
# The target directory is a cache mount, so the binary is copied out of it within the same step. The data dir
# is made here because the runtime image has no shell: owned by the runtime user, so a fresh volume mounted
# there (Docker copies the image's directory into it) is writable.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    cargo build --release --locked --package groove-destination --bin groove-destination \
    && install -D -m 0755 target/release/groove-destination /out/groove-destination \
    && install -d -m 0700 -o 65532 -g 65532 /out/var/lib/groove-destination

# The fake Groove, for docker-compose.yaml only (`--target sandbox`); a plain build skips these two stages.
FROM builder AS sandbox-builder
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    cargo build --release --locked --package groove-sandbox --bin groove-sandbox \
    && install -D -m 0755 target/release/groove-sandbox /out/groove-sandbox

FROM gcr.io/distroless/cc-debian12:nonroot AS sandbox
COPY --from=sandbox-builder /out/groove-sandbox /usr/local/bin/groove-sandbox
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/groove-sandbox"]

# distroless/cc: glibc, libgcc and CA certificates, no shell or package manager. Its `nonroot` user is 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="groove-destination" \
      org.opencontainers.image.description="gRPC service that delivers streams of records to the Groove helpdesk REST API" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/groove-destination /usr/local/bin/groove-destination
# The parent's contents, so the directory keeps its mode (0700): one that COPY creates may get 0755.
COPY --from=builder --chown=65532:65532 /out/var/lib/ /var/lib/
# Everything the server writes lives in the data dir (lock file, secret.key unless the key comes from the
# environment, the SQLite database and its -wal/-shm files), so the root file system can be read-only.
# SQLite's temporary files (statement journals and sorts that outgrow memory) would otherwise go to /tmp.
# Listening beyond loopback needs caller authentication: mount a callers file and set
# GROOVE_DESTINATION_AUTH_TOKENS_FILE (or TLS with a client CA), or the server refuses to start.
ENV GROOVE_DESTINATION_LISTEN=0.0.0.0:50051 \
    GROOVE_DESTINATION_DATA_DIR=/var/lib/groove-destination \
    GROOVE_DESTINATION_LOG_FORMAT=json \
    GROOVE_DESTINATION_METRICS_LISTEN=0.0.0.0:9090 \
    SQLITE_TMPDIR=/var/lib/groove-destination
VOLUME ["/var/lib/groove-destination"]
EXPOSE 50051 9090
USER 65532:65532
# No HEALTHCHECK: the image has no shell or probe binary to run one. Kubernetes probes gRPC health natively;
# elsewhere, probe grpc.health.v1 from outside (grpcurl, grpc_health_probe).
ENTRYPOINT ["/usr/local/bin/groove-destination"]
