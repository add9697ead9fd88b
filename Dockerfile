# The `tollgate` binary (control plane, edge proxy, CLI) on a slim Debian; compose.yaml builds it.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tollgate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tollgate /usr/local/bin/tollgate
ENTRYPOINT ["tollgate"]
