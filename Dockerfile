# rexec-svc and rexec-cli in one small image.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /out/ ./cmd/rexec-svc ./cmd/rexec-cli

# A shell stays in the image: docker-compose's set-up step chains commands.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 rexec
# Where docker-compose keeps the audit signing key: a named volume mounted
# here starts out owned by rexec.
RUN mkdir /audit && chown rexec /audit && chmod 700 /audit
COPY --from=build /out/rexec-svc /out/rexec-cli /usr/local/bin/
USER rexec
EXPOSE 8080
ENTRYPOINT ["rexec-svc"]
CMD ["serve", "-listen", "0.0.0.0:8080"]
