//go:build tools

// Package consul pins the Consul agent that rexec's tests and dev mode run.
//
// It is a module of its own so that Consul's large dependency graph never
// reaches the project's go.mod. Build it with `make consul` (or
// scripts/build-consul.sh), which writes bin/consul.
package consul

import _ "github.com/hashicorp/consul"
