package main

// `cs-journal-bouncer [-c FILE] setup [--from OLD]` is what the Debian
// package's postinst runs to make the installed config usable, the way
// users know from crowdsec's own bouncer packages. It writes FILE.local
// (the overlay Load merges over FILE, which stays the package's pristine
// conffile) once, and never rewrites it:
//
//  1. OLD (crowdsec-firewall-bouncer.yaml) exists: its effective values,
//     OLD.local merged in as that bouncer does, are carried over — mode,
//     LAPI URL and credentials, chains, set names, filters, and so on.
//     OLD is only read.
//  2. No usable credentials yet, cscli installed and crowdsec configured:
//     a bouncer is registered with `cscli bouncers add NAME`; the key goes
//     into FILE.local and NAME into FILE.id, so purging the package can
//     delete it again.
//  3. No mode yet: nftables when nft is installed, else iptables (as
//     upstream's installer picks). A mode this build cannot run falls back
//     to iptables, and says so.
//
// Exit codes: 0 the config is complete (start the service), 4 it was
// written but cannot start yet (no credentials: the message says what to
// do), 1 an error, 2 usage.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/config"
)

const (
	// upstreamConfigPath is where crowdsec-firewall-bouncer (upstream's and
	// Debian's packages) keeps its config; Debian's package puts mode and
	// api_key into its .local overlay.
	upstreamConfigPath = "/etc/crowdsec/bouncers/crowdsec-firewall-bouncer.yaml"
	// crowdsecConfigPath exists once crowdsec is configured; before that,
	// `cscli bouncers add` has no database to write to.
	crowdsecConfigPath = "/etc/crowdsec/config.yaml"
	exitIncomplete     = 4
	// cscliTimeout bounds a registration: it runs from a maintainer script.
	cscliTimeout = 30 * time.Second
)

// setupEnv is what setup asks of the machine; tests replace it.
type setupEnv struct {
	lookPath       func(string) (string, error)
	run            func(ctx context.Context, name string, args ...string) ([]byte, error)
	crowdsecConfig string
	now            func() time.Time
}

func hostSetupEnv() setupEnv {
	return setupEnv{
		lookPath: exec.LookPath,
		run: func(ctx context.Context, name string, args ...string) ([]byte, error) {
			var stderr strings.Builder
			cmd := exec.CommandContext(ctx, name, args...)
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
			}
			return out, nil
		},
		crowdsecConfig: crowdsecConfigPath,
		now:            time.Now,
	}
}

// runSetup parses setup's flags and runs it on the real machine.
func runSetup(args []string, cfgPath string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cs-journal-bouncer setup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	from := fs.String("from", upstreamConfigPath, "crowdsec-firewall-bouncer config to migrate from, when it exists")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "setup: unexpected arguments %q\n", fs.Args())
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*cscliTimeout)
	defer cancel()
	code, err := setup(ctx, cfgPath, *from, hostSetupEnv(), stdout)
	if err != nil {
		fmt.Fprintf(stderr, "cs-journal-bouncer setup: %v\n", err)
		return 1
	}
	return code
}

// setup writes cfgPath.local when it does not exist yet (see the top of
// this file), then reports whether cfgPath is complete.
func setup(ctx context.Context, cfgPath, from string, env setupEnv, out io.Writer) (int, error) {
	say := func(format string, a ...any) { fmt.Fprintf(out, "cs-journal-bouncer: "+format+"\n", a...) }
	local := cfgPath + ".local"
	switch _, err := os.Stat(local); {
	case err == nil:
		say("keeping %s (written earlier; the package never rewrites it)", local)
		return checkComplete(cfgPath, local, say), nil
	case !errors.Is(err, fs.ErrNotExist):
		return 0, err
	}

	settings := map[string]any{}
	var notes []string
	migrated, err := migrateFrom(from, settings, say)
	if err != nil {
		return 0, err
	}
	if migrated {
		notes = append(notes, "settings migrated from "+from+" (and its .local), which was left untouched")
		if hasAuth(settings) {
			if err := takeOverID(from+".id", cfgPath+".id", say); err != nil {
				return 0, err
			}
		}
	}
	if !hasAuth(settings) {
		name, key, err := register(ctx, env, say)
		if err != nil {
			return 0, err
		}
		if key != "" {
			settings["api_key"] = key
			if err := writeFile0600(cfgPath+".id", []byte(name+"\n")); err != nil {
				return 0, err
			}
			notes = append(notes, "bouncer "+name+" registered with `cscli bouncers add` (deleted again on purge)")
		}
	}
	pickMode(settings, env, say)

	if err := writeLocal(local, settings, notes, env.now()); err != nil {
		return 0, err
	}
	say("wrote %s (0600)", local)
	return checkComplete(cfgPath, local, say), nil
}

// migrateFrom merges the effective settings of from (and from.local) into
// settings, dropping values that cannot work under systemd (references to
// environment variables, which a service does not have).
func migrateFrom(from string, settings map[string]any, say func(string, ...any)) (bool, error) {
	if _, err := os.Stat(from); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	old, err := config.Settings(from)
	if err != nil {
		say("cannot read %s, not migrating it: %v", from, err)
		return false, nil
	}
	for _, k := range []string{"mode", "api_key"} {
		if s, ok := old[k].(string); ok && (s == "" || config.Unexpanded(s)) {
			if s != "" {
				say("%s in %s is %q, which only works where that variable is set: not carried over", k, from, s)
			}
			delete(old, k)
		}
	}
	for k, v := range old {
		settings[k] = v
	}
	say("migrating from %s (+ .local): %s", from, summarize(settings))
	return true, nil
}

// summarize names the settings that decide what gets banned and where,
// never the key itself.
func summarize(s map[string]any) string {
	var parts []string
	for _, k := range []string{"mode", "api_url"} {
		if v, ok := s[k]; ok {
			parts = append(parts, fmt.Sprintf("%s=%v", k, v))
		}
	}
	switch {
	case s["api_key"] != nil:
		parts = append(parts, "auth=api_key")
	case s["cert_path"] != nil && s["cert_path"] != "":
		parts = append(parts, "auth=client certificate")
	default:
		parts = append(parts, "auth=none")
	}
	for _, k := range []string{"iptables_chains", "blacklists_ipv4", "blacklists_ipv6", "origins", "deny_action"} {
		if v, ok := s[k]; ok {
			parts = append(parts, fmt.Sprintf("%s=%v", k, v))
		}
	}
	parts = append(parts, fmt.Sprintf("(%d settings in all)", len(s)))
	return strings.Join(parts, " ")
}

func hasAuth(s map[string]any) bool {
	str := func(k string) string { v, _ := s[k].(string); return v }
	return str("api_key") != "" || (str("cert_path") != "" && str("key_path") != "")
}

// takeOverID moves crowdsec-firewall-bouncer's record of the bouncer it
// registered to ours: we now use that key, and Debian's package deletes
// the bouncer named there when it is purged, which would cut us off.
func takeOverID(oldID, ourID string, say func(string, ...any)) error {
	name, err := os.ReadFile(oldID)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := writeFile0600(ourID, name); err != nil {
		return err
	}
	if err := os.Remove(oldID); err != nil {
		return err
	}
	say("took over bouncer registration %q (%s → %s): purging crowdsec-firewall-bouncer will not delete the key now in use",
		strings.TrimSpace(string(name)), oldID, ourID)
	return nil
}

// register adds a bouncer with cscli when crowdsec is installed and
// configured here. No key and no error means it could not, and said why.
func register(ctx context.Context, env setupEnv, say func(string, ...any)) (name, key string, err error) {
	cscli, err := env.lookPath("cscli")
	if err != nil {
		say("cscli not found: no bouncer registered (install crowdsec, or point api_url/api_key at a remote LAPI)")
		return "", "", nil
	}
	if _, err := os.Stat(env.crowdsecConfig); err != nil {
		say("crowdsec is not configured (%s missing): no bouncer registered", env.crowdsecConfig)
		return "", "", nil
	}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", err
	}
	name = "cs-journal-bouncer-" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(ctx, cscliTimeout)
	defer cancel()
	out, err := env.run(ctx, cscli, "--error", "-oraw", "bouncers", "add", name)
	key = strings.TrimSpace(string(out))
	if err != nil || key == "" || strings.ContainsAny(key, " \n") {
		say("registering with cscli failed, no key stored: %v (output %q)", err, key)
		return "", "", nil
	}
	say("registered bouncer %s with the local API (cscli bouncers add)", name)
	return name, key, nil
}

// pickMode sets mode when nothing did, like upstream's installer, and
// replaces a mode this build cannot run by iptables.
func pickMode(s map[string]any, env setupEnv, say func(string, ...any)) {
	mode, _ := s["mode"].(string)
	if mode == "" {
		mode = "iptables"
		why := "nft not found"
		if _, err := env.lookPath("nft"); err == nil {
			mode, why = "nftables", "nft found"
		}
		say("mode: %s (%s, as upstream's installer picks)", mode, why)
	}
	if !modeSupported(mode) {
		say("mode %s is not supported by this version of cs-journal-bouncer: using iptables instead "+
			"(the same bans, as iptables rules and ipsets)", mode)
		mode = "iptables"
	}
	s["mode"] = mode
}

// modeSupported asks the config loader itself, so that a mode added to it
// is picked up here without a change.
func modeSupported(mode string) bool {
	dir, err := os.MkdirTemp("", "cs-journal-bouncer-mode")
	if err != nil {
		return mode == config.ModeIPTables || mode == config.ModeIPSet
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "probe.yaml")
	text := fmt.Sprintf("mode: %q\napi_url: http://127.0.0.1:8080/\napi_key: probe\n", mode)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		return mode == config.ModeIPTables || mode == config.ModeIPSet
	}
	_, err = config.Load(path, nil)
	return !errors.Is(err, config.ErrUnsupportedMode)
}

// writeLocal writes the overlay atomically, 0600: it holds the API key.
func writeLocal(path string, s map[string]any, notes []string, now time.Time) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by the cs-journal-bouncer package on %s.\n", now.UTC().Format(time.RFC3339))
	sort.Strings(notes)
	for _, n := range notes {
		fmt.Fprintf(&b, "# %s\n", n)
	}
	b.WriteString("# Merged over cs-journal-bouncer.yaml. Edit freely: the package never\n" +
		"# rewrites this file, and deletes it on purge.\n")
	body, err := yaml.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	b.Write(body)
	return writeFile0600(path, []byte(b.String()))
}

func writeFile0600(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// checkComplete loads the config as the service will (no environment) and
// says whether it can start, and if not, what to do.
func checkComplete(cfgPath, local string, say func(string, ...any)) int {
	res, err := config.Load(cfgPath, nil)
	if err != nil {
		say("not starting the service: %v", err)
		say("to finish: set api_url and api_key in %s (on the LAPI host: cscli bouncers add cs-journal-bouncer), "+
			"then: systemctl enable --now cs-journal-bouncer", local)
		return exitIncomplete
	}
	say("config complete: mode %s, LAPI %s", res.Config.Mode, res.Config.APIURL)
	return 0
}
