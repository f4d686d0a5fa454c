package main

// The operator's commands, in the daemon's binary:
//
//	cs-journal-bouncer [-c FILE] journal stats   [--json]
//	cs-journal-bouncer [-c FILE] journal show    [--json] <ip|cidr>
//	cs-journal-bouncer [-c FILE] journal list    [--json]
//	cs-journal-bouncer [-c FILE] journal export          (always JSON)
//	cs-journal-bouncer [-c FILE] journal verify  [--json]
//	cs-journal-bouncer [-c FILE] check           [--json]
//
// Flags may come before or after the command words. Each command asks the
// running daemon over its admin socket (<journal dir>/admin.sock) and, when
// none answers, reads the journal file itself, read-only; `check` then
// builds the firewall backend from the same config, read-only too. No
// command changes the journal or the kernel; `check` does not repair.
//
// Exit codes: 0 yes/ok (blocked, sound, no drift); 1 the negative answer
// (show: not blocked; verify: problems; check: drift); 2 usage; 3 the
// question could not be answered (config, journal locked by a daemon that
// does not answer, kernel unreadable, ...).

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/admin"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/config"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/heal"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

// CLI exit codes.
const (
	exitOK       = 0
	exitNegative = 1
	exitUsage    = 2
	exitError    = 3
)

// isCLICommand reports whether the first non-flag argument starts an
// operator command rather than being a stray argument to the daemon.
func isCLICommand(arg string) bool { return arg == "journal" || arg == "check" }

const cliUsage = `usage:
  cs-journal-bouncer [-c FILE] journal stats  [--json]
  cs-journal-bouncer [-c FILE] journal show   [--json] <ip|cidr>   exit 1 if not blocked
  cs-journal-bouncer [-c FILE] journal list   [--json]
  cs-journal-bouncer [-c FILE] journal export                      JSON array
  cs-journal-bouncer [-c FILE] journal verify [--json]             exit 1 on problems
  cs-journal-bouncer [-c FILE] check          [--json]             exit 1 on drift
exit codes: 0 ok, 1 negative answer, 2 usage, 3 could not answer
`

// cliOpts are what a command needs besides its words.
type cliOpts struct {
	cfgPath string
	json    bool
	verbose bool
	stdout  io.Writer
	stderr  io.Writer
}

// runCLI runs one operator command; args start with "journal" or "check".
// cfgPath is the -c given before the command (or the default).
func runCLI(args []string, cfgPath string, verbose bool, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cs-journal-bouncer "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, cliUsage) }
	o := cliOpts{stdout: stdout, stderr: stderr}
	fs.StringVar(&o.cfgPath, "c", cfgPath, "path to the config file")
	fs.BoolVar(&o.json, "json", false, "print JSON")
	fs.BoolVar(&o.verbose, "v", verbose, "debug logging")
	words, err := parseInterspersed(fs, args)
	if err != nil {
		return exitUsage
	}
	cmd, rest := words[0], words[1:]
	if cmd == "journal" {
		if len(rest) == 0 {
			fmt.Fprint(stderr, cliUsage)
			return exitUsage
		}
		cmd, rest = "journal "+rest[0], rest[1:]
	}
	wantArgs := 0
	if cmd == "journal show" {
		wantArgs = 1
	}
	switch cmd {
	case "journal stats", "journal show", "journal list", "journal export", "journal verify", "check":
	default:
		fmt.Fprintf(stderr, "unknown command %q\n%s", cmd, cliUsage)
		return exitUsage
	}
	if len(rest) != wantArgs {
		fmt.Fprintf(stderr, "%s: want %d argument(s), got %q\n%s", cmd, wantArgs, rest, cliUsage)
		return exitUsage
	}
	var target netip.Prefix
	if cmd == "journal show" {
		if target, err = admin.ParseTarget(rest[0]); err != nil {
			fmt.Fprintf(stderr, "journal show: %q is not an IP address or CIDR\n", rest[0])
			return exitUsage
		}
	}

	res, err := config.Load(o.cfgPath, os.LookupEnv)
	if err != nil {
		fmt.Fprintf(stderr, "cs-journal-bouncer: %v\n", err)
		return exitError
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	code, err := withService(ctx, res.Config, o, cmd == "check", func(svc admin.Service) (int, error) {
		return runCommand(ctx, cmd, target, svc, res.Config, o)
	})
	if err != nil {
		fmt.Fprintf(stderr, "cs-journal-bouncer %s: %v\n", cmd, err)
		return exitError
	}
	return code
}

// parseInterspersed parses flags anywhere among the words, which the flag
// package alone stops at: `journal show 192.0.2.1 --json` must work.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var words []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return words, nil
		}
		words = append(words, args[0])
		args = args[1:]
	}
}

// withService runs fn against the daemon, or, when no daemon answers,
// against the journal file opened read-only.
func withService(ctx context.Context, cfg *config.Config, o cliOpts, needKernel bool, fn func(admin.Service) (int, error)) (int, error) {
	sock := admin.SocketPath(cfg.JournalPath)
	code, err := fn(admin.NewClient(sock))
	if !errors.Is(err, admin.ErrNoDaemon) {
		return code, err
	}
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(o.stderr, &slog.HandlerOptions{Level: level}))
	j, err := journal.Open(journal.Options{Path: cfg.JournalPath, ReadOnly: true, Logger: log})
	switch {
	case errors.Is(err, journal.ErrLocked):
		return 0, fmt.Errorf("the journal %s is locked by another process, but nothing answers on %s "+
			"(a daemon without the admin socket, or a stuck one)", cfg.JournalPath, sock)
	case errors.Is(err, journal.ErrCorrupt):
		return 0, fmt.Errorf("no daemon running, and the journal cannot be read: %w", err)
	case err != nil:
		return 0, fmt.Errorf("no daemon running (%s), and the journal cannot be opened: %w", sock, err)
	}
	defer j.Close()
	fmt.Fprintf(o.stderr, "no daemon on %s: reading %s directly\n", sock, cfg.JournalPath)
	var check func(context.Context) (backend.Drift, error)
	if needKernel {
		be, err := newBackend(cfg, log)
		if err != nil {
			return 0, fmt.Errorf("backend: %w", err)
		}
		// Check only reads; the loop's tuning does not matter to it.
		enf := heal.New(heal.Config{}, heal.Deps{Journal: j, Backend: be, Logger: log})
		check = enf.CheckOffline
	}
	return fn(admin.NewOfflineService(j, check, nil))
}

// runCommand asks svc and prints the answer.
func runCommand(ctx context.Context, cmd string, target netip.Prefix, svc admin.Service, cfg *config.Config, o cliOpts) (int, error) {
	switch cmd {
	case "journal stats":
		st, err := svc.Stats(ctx)
		if err != nil {
			return 0, err
		}
		if o.json {
			return exitOK, printJSON(o.stdout, st)
		}
		return exitOK, formatStats(o.stdout, st, setNamer(cfg))
	case "journal show":
		sh, err := svc.Show(ctx, target)
		if err != nil {
			return 0, err
		}
		code := exitOK
		if !sh.Blocked() {
			code = exitNegative
		}
		if o.json {
			return code, printJSON(o.stdout, sh)
		}
		return code, formatShow(o.stdout, sh)
	case "journal list", "journal export":
		es, err := svc.List(ctx)
		if err != nil {
			return 0, err
		}
		if o.json || cmd == "journal export" {
			return exitOK, printJSON(o.stdout, es)
		}
		return exitOK, formatList(o.stdout, es)
	case "journal verify":
		rep, err := svc.Verify(ctx)
		if err != nil {
			return 0, err
		}
		code := exitOK
		if !rep.OK() {
			code = exitNegative
		}
		if o.json {
			return code, printJSON(o.stdout, rep)
		}
		return code, formatVerify(o.stdout, rep)
	case "check":
		ch, err := svc.Check(ctx)
		if err != nil {
			return 0, err
		}
		code := exitOK
		if !ch.Clean {
			code = exitNegative
		}
		if o.json {
			return code, printJSON(o.stdout, ch)
		}
		return code, formatCheck(o.stdout, ch)
	}
	return exitUsage, fmt.Errorf("unknown command %q", cmd)
}

// setNamer names an origin's kernel set the way the backend does, from
// the config alone (building the backend touches nothing).
func setNamer(cfg *config.Config) func(origin int, v6 bool) string {
	be, err := newBackend(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return func(int, bool) string { return "?" }
	}
	return func(origin int, v6 bool) string { return be.SetName(be.SetKeyOf(origin, v6)) }
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Times are printed in UTC, to the second: journal resolution is a
// millisecond, but operators compare with logs and cscli, not with ms.
func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "unknown"
	}
	return t.UTC().Format(time.RFC3339)
}

// fmtRemaining is until - now, to the second.
func fmtRemaining(until, now time.Time) string {
	d := until.Sub(now)
	if d <= 0 {
		return "expired"
	}
	return d.Round(time.Second).String()
}

func formatStats(w io.Writer, st admin.Stats, setName func(int, bool) string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "journal\t%s\n", st.Path)
	fmt.Fprintf(tw, "file size\t%d bytes\n", st.FileSize)
	fmt.Fprintf(tw, "events since snapshot\t%d\n", st.EventsSinceSnapshot)
	fmt.Fprintf(tw, "active decisions\t%d\n", st.Active)
	if st.Active > 0 {
		fmt.Fprintf(tw, "oldest expiry\t%s (in %s)\n", fmtTime(st.OldestUntil), fmtRemaining(st.OldestUntil, st.Now))
		fmt.Fprintf(tw, "newest expiry\t%s (in %s)\n", fmtTime(st.NewestUntil), fmtRemaining(st.NewestUntil, st.Now))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(st.ByOrigin) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ORIGIN\tIPV4\tIPV4 SET\tIPV6\tIPV6 SET")
	for _, c := range st.ByOrigin {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\n", c.Origin, c.IPv4, setName(c.Index, false), c.IPv6, setName(c.Index, true))
	}
	return tw.Flush()
}

func formatShow(w io.Writer, sh admin.Show) error {
	what := sh.Target.String()
	if sh.Target.IsSingleIP() {
		what = sh.Target.Addr().String()
	}
	if !sh.Blocked() {
		_, err := fmt.Fprintf(w, "%s is not blocked: no active decision covers it\n", what)
		return err
	}
	verb := "is blocked by"
	if !sh.Target.IsSingleIP() {
		verb = "overlaps"
	}
	plural := "s"
	if len(sh.Matches) == 1 {
		plural = ""
	}
	fmt.Fprintf(w, "%s %s %d active decision%s:\n", what, verb, len(sh.Matches), plural)
	for _, e := range sh.Matches {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "  value\t%s\n", e.Value)
		fmt.Fprintf(tw, "  origin\t%s\n", e.Origin)
		fmt.Fprintf(tw, "  scenario\t%s\n", e.Scenario)
		fmt.Fprintf(tw, "  type\t%s\n", e.Type)
		fmt.Fprintf(tw, "  scope\t%s\n", e.Scope)
		fmt.Fprintf(tw, "  expires\t%s (in %s)\n", fmtTime(e.Until), fmtRemaining(e.Until, sh.Now))
		since := fmtTime(e.Since)
		if !e.Since.IsZero() {
			since += fmt.Sprintf(" (%s ago)", sh.Now.Sub(e.Since).Round(time.Second))
		}
		fmt.Fprintf(tw, "  since\t%s\n", since)
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

func formatList(w io.Writer, es []admin.Entry) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VALUE\tORIGIN\tSCENARIO\tTYPE\tSCOPE\tEXPIRES\tSINCE")
	for _, e := range es {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Value, e.Origin, e.Scenario, e.Type, e.Scope, fmtTime(e.Until), fmtTime(e.Since))
	}
	return tw.Flush()
}

func formatVerify(w io.Writer, rep journal.VerifyReport) error {
	fmt.Fprintf(w, "journal %s: snapshot of %d decisions, %d events (%d decisions)\n",
		rep.Path, rep.SnapshotDecisions, rep.Events, rep.EventDecisions)
	if rep.OK() {
		_, err := fmt.Fprintln(w, "ok: no problem found")
		return err
	}
	fmt.Fprintf(w, "%d problem(s):\n", len(rep.Problems))
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "  %s\n", p)
	}
	return nil
}

func formatCheck(w io.Writer, ch admin.Check) error {
	if ch.Clean {
		_, err := fmt.Fprintln(w, "ok: the kernel matches the journal")
		return err
	}
	fmt.Fprintf(w, "drift: %d finding(s)\n", len(ch.Drift))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, d := range ch.Drift {
		fmt.Fprintf(tw, "  %s\t%s\n", d.Kind, d.Detail)
	}
	return tw.Flush()
}
