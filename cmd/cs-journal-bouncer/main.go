// Command cs-journal-bouncer is a CrowdSec firewall bouncer that journals
// every LAPI batch to disk before the kernel sees it, enforces the journal at
// boot without LAPI, and repairs flushed chains and sets in-process.
//
// Exit codes: 0 clean shutdown, 1 configuration or start-up error, 2 usage
// error, 3 (heal.ExitReplayFailed) the repair ladder was exhausted. The
// operator commands `journal ...` and `check` have their own (see cli.go).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/config"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/heal"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

// realMain parses flags and runs; it returns the process exit code so tests
// can call it.
func realMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cs-journal-bouncer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", defaultConfigPath(), "path to the config file (crowdsec-firewall-bouncer.yaml compatible)")
	testCfg := fs.Bool("t", false, "test the config and exit")
	printCfg := fs.Bool("T", false, "print the merged config (secrets masked) and exit")
	verbose := fs.Bool("v", false, "debug logging (overrides log_level)")
	showVersion := fs.Bool("V", false, "print the version and exit")
	fs.BoolVar(showVersion, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Fprintf(stdout, "cs-journal-bouncer %s\n", version)
		return 0
	}
	if fs.NArg() > 0 && isPackageCommand(fs.Arg(0)) {
		// setup and cleanup, run by the Debian package (pkgcmd.go).
		return runPackageCommand(fs.Args(), *cfgPath, stdout, stderr)
	}
	if fs.NArg() > 0 && isCLICommand(fs.Arg(0)) {
		// Operator commands (cli.go): `journal ...` and `check`.
		return runCLI(fs.Args(), *cfgPath, *verbose, stdout, stderr)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected arguments: %q\n", fs.Args())
		return 2
	}

	res, err := config.Load(*cfgPath, os.LookupEnv)
	if err != nil {
		fmt.Fprintf(stderr, "cs-journal-bouncer: %v\n", err)
		return 1
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(stderr, "cs-journal-bouncer: config %s: warning: %s\n", *cfgPath, w)
	}
	if *printCfg {
		if err := res.Config.Dump(stdout); err != nil {
			fmt.Fprintf(stderr, "cs-journal-bouncer: %v\n", err)
			return 1
		}
		return 0
	}
	// The kernel's limits (name lengths, which deny actions a mode can do)
	// are the backend's rules: building it, which touches no kernel, makes
	// -t and the start report them as config errors, key and value.
	if err := checkBackend(res.Config); err != nil {
		fmt.Fprintf(stderr, "cs-journal-bouncer: config %s: %v\n", *cfgPath, err)
		return 1
	}
	if *testCfg {
		fmt.Fprintf(stdout, "config %s is valid\n", *cfgPath)
		return 0
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup, stopHup := catchSignals(*cfgPath) // signals.go: SIGHUP and SIGPIPE never stop us
	defer stopHup()
	logw := newLogWriter(stderr) // a stalled log reader must not stall the daemon
	err = run(ctx, res.Config, *verbose, logw, hup)
	logw.Close(5 * time.Second)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, heal.ErrReplayFailed):
		fmt.Fprintf(stderr, "cs-journal-bouncer: %v\n", err)
		return heal.ExitReplayFailed
	default:
		fmt.Fprintf(stderr, "cs-journal-bouncer: %v\n", err)
		return 1
	}
}
