# syntax=docker/dockerfile:1
# citadel-authz container image.
#
#   docker build -t citadel-authz .
#   docker run --rm -p 9191:9191 -p 9192:9192 \
#     -v $PWD/my-config:/etc/citadel-authz:ro citadel-authz            # serve
#   docker run --rm -v $PWD/my-config:/etc/citadel-authz:ro citadel-authz check-config
#
# The image holds a default config (deploy/docker/citadel-authz.yaml + envoy/policy.yaml) in
# /etc/citadel-authz; mount your own directory there (or a ConfigMap, see deploy/kubernetes).
# CITADEL_AUTHZ_CONFIG names the file, so `serve` and `check-config` need no --config.
#
# No docker daemon exists on the build machines: this file is checked statically by the test
# suite (tests/it/envoy.rs), not built there.

ARG RUST_VERSION=1.95

# --- build ------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
# aws-lc-rs builds AWS-LC from C sources.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin citadel-authz \
 && install -D -m 0755 target/release/citadel-authz /out/citadel-authz

# --- run --------------------------------------------------------------------------------------
# distroless: glibc and libgcc, no shell, no package manager; runs as uid 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/citadel-authz /usr/local/bin/citadel-authz
COPY deploy/docker/citadel-authz.yaml /etc/citadel-authz/citadel-authz.yaml
COPY envoy/policy.yaml /etc/citadel-authz/policy.yaml
ENV CITADEL_AUTHZ_CONFIG=/etc/citadel-authz/citadel-authz.yaml
USER nonroot:nonroot
# 9191: gRPC ext_authz (Envoy, Istio). 9192: /healthz, /readyz, /metrics, forward-auth.
EXPOSE 9191 9192
ENTRYPOINT ["/usr/local/bin/citadel-authz"]
CMD ["serve", "--config", "/etc/citadel-authz/citadel-authz.yaml", "--log-format", "json"]
