package main

import (
	"log/slog"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend/iptables"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/config"
)

// newBackend builds the firewall backend for cfg.Mode. Building it touches
// nothing in the kernel.
func newBackend(cfg *config.Config, log *slog.Logger) (backend.Backend, error) {
	return iptables.New(backendConfig(cfg, log))
}
