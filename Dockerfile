# poolfs in a container. Public base images cannot be pulled on the project's
# machines, so both base images are build arguments: point them at local
# images (e.g. one made with debootstrap and `podman import`), then
#   podman build --build-arg GO_IMAGE=... --build-arg BASE_IMAGE=... -t poolfs .
# CI does not build this file.
#
# Running it needs /dev/fuse and CAP_SYS_ADMIN, and the store must be a
# bind mount with shared propagation so the host's podman sees the FUSE mount;
# share /run/poolfs for `poolfs status`/`gc`/`auth-helper` from the host
# (README, "Container image"):
#   podman run -d --privileged --device /dev/fuse --network host \
#     -v /var/lib/poolfs:/var/lib/poolfs:rshared -v /run/poolfs:/run/poolfs poolfs
# (Checked by hand: the mount shows on the host, podman stop unmounts.)

ARG GO_IMAGE=golang:1.26-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${GO_IMAGE} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/poolfs ./cmd/poolfs

FROM ${BASE_IMAGE}
RUN apt-get update \
	&& apt-get install -y --no-install-recommends fuse3 ca-certificates \
	&& rm -rf /var/lib/apt/lists/*
COPY --from=build /out/poolfs /usr/local/bin/poolfs
VOLUME ["/var/lib/poolfs"]
ENTRYPOINT ["poolfs"]
CMD ["serve", "/var/lib/poolfs/store"]
