package pkgtest

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"
)

const (
	unit       = "cs-journal-bouncer"
	debUnit    = "crowdsec-firewall-bouncer"
	ourConf    = "/etc/crowdsec/bouncers/cs-journal-bouncer.yaml"
	debConf    = "/etc/crowdsec/bouncers/crowdsec-firewall-bouncer.yaml"
	pullWithin = 45 * time.Second // update_frequency is 10s in both configs
)

var (
	oldBan = netip.MustParseAddr("192.0.2.10")
	newBan = netip.MustParseAddr("192.0.2.11")
	fresh  = netip.MustParseAddr("203.0.113.7")
)

// waitDropped polls the kernel probe until ip is dropped.
func (m *machine) waitDropped(ip netip.Addr, within time.Duration) enforcement {
	m.t.Helper()
	var e enforcement
	var err error
	ok := poll(within, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e, err = m.dropped(ctx, ip)
		return err == nil && e.dropped
	})
	if !ok {
		st, _ := m.sh("systemctl status --no-pager " + unit + " " + debUnit + "; tail -20 /var/log/cs-journal-bouncer.log")
		m.t.Fatalf("%s never dropped within %s (probe error: %v)\n%s", ip, within, err, st)
	}
	return e
}

// bouncers is `cscli bouncers list -o json`, by name.
func (m *machine) bouncers() map[string]map[string]any {
	m.t.Helper()
	var list []map[string]any
	if err := json.Unmarshal([]byte(m.must("cscli bouncers list -o json 2>/dev/null")), &list); err != nil {
		m.t.Fatalf("cscli bouncers list: %v", err)
	}
	out := map[string]map[string]any{}
	for _, b := range list {
		if n, ok := b["name"].(string); ok {
			out[n] = b
		}
	}
	return out
}

// localValue reads one top-level key of a YAML overlay written by a
// postinst (flat "key: value" lines).
func (m *machine) localValue(path, key string) string {
	m.t.Helper()
	for _, l := range strings.Split(m.must("cat "+path), "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// startDebianBouncer waits for crowdsec and Debian's bouncer (in mode, or
// its postinst's default when mode is ""), then bans oldBan with cscli and
// waits until the kernel drops it.
func (m *machine) startDebianBouncer(mode string) {
	m.t.Helper()
	if mode != "" {
		m.must("sed -i 's/^mode:.*/mode: " + mode + "/' " + debConf + ".local && systemctl restart " + debUnit)
	}
	for _, u := range []string{"crowdsec", debUnit} {
		if !poll(60*time.Second, func() bool { return m.active(u) == "active" }) {
			m.t.Fatalf("%s not active: %s", u, m.must("systemctl status --no-pager "+u+" || true"))
		}
	}
	m.must("cscli decisions add --ip " + oldBan.String() + " -d 4h >/dev/null 2>&1")
	e := m.waitDropped(oldBan, pullWithin)
	m.t.Logf("Debian's bouncer (mode %s) enforces %s via %s", m.localValue(debConf+".local", "mode"), oldBan, e.how)
}

// migrate installs the package over Debian's running bouncer and checks
// what a migrating user must see, logging apt's transcript.
func (m *machine) migrate() {
	t := m.t
	t.Helper()
	debKey := m.localValue(debConf+".local", "api_key")
	debMode := m.localValue(debConf+".local", "mode")
	debName := strings.TrimSpace(m.must("cat " + debConf + ".id"))
	before := m.must("sha256sum " + debConf + " " + debConf + ".local")

	stop := m.startProbe(oldBan)
	out, err := m.installDeb("")
	window := stop()
	t.Logf("apt install ./%s over Debian's bouncer:\n%s", "cs-journal-bouncer.deb", out)
	t.Logf("probe of %s during the migration (Debian's stops, ours starts): %s", oldBan, window)
	if err != nil {
		t.Fatalf("apt install: %v", err)
	}
	if window.checks < 3 || window.gaps > 0 || len(window.errs) > 0 {
		t.Errorf("the migration lifted the ban: %s", window)
	}
	if got := m.active(unit); got != "active" {
		t.Fatalf("%s is %s after install; its journal:\n%s", unit, got, m.must("journalctl -u "+unit+" --no-pager | tail -40"))
	}
	if got := m.active(debUnit); got == "active" {
		t.Fatalf("%s still active: two bouncers", debUnit)
	}
	if got, _ := m.sh("systemctl is-enabled " + debUnit); strings.TrimSpace(got) != "masked" {
		t.Errorf("%s is %q after install: a boot or an upgrade of it would start two bouncers", debUnit, strings.TrimSpace(got))
	}
	if !strings.Contains(out, "took over from "+debUnit) {
		t.Errorf("the transcript does not say the old bouncer's rules were handed over")
	}
	if left := m.oldSets(); len(left) > 0 {
		t.Errorf("Debian's sets left in the kernel after the takeover: %q", left)
	}
	if got := m.localValue(ourConf+".local", "api_key"); got != debKey || got == "" {
		t.Errorf("our api_key is not Debian's (%d chars vs %d)", len(got), len(debKey))
	}
	ourMode := m.localValue(ourConf+".local", "mode")
	if ourMode != debMode && !strings.Contains(out, "mode "+debMode+" is not supported by this version") {
		t.Errorf("mode %q, Debian's was %q, and no word about why", ourMode, debMode)
	}
	t.Logf("Debian's mode %s → ours %s", debMode, ourMode)
	if after := m.must("sha256sum " + debConf + " " + debConf + ".local"); after != before {
		t.Errorf("Debian's config changed:\n%s\n%s", before, after)
	}
	if !strings.Contains(out, "migrating from "+debConf) {
		t.Errorf("the transcript does not say it migrated")
	}

	e := m.waitDropped(oldBan, pullWithin)
	t.Logf("after install %s is dropped via %s", oldBan, e.how)
	m.must("cscli decisions add --ip " + newBan.String() + " -d 4h >/dev/null 2>&1")
	e = m.waitDropped(newBan, pullWithin)
	t.Logf("new cscli ban %s dropped via %s", newBan, e.how)

	b := m.bouncers()[debName]
	if b == nil {
		t.Fatalf("bouncer %s (Debian's key) gone from cscli bouncers list", debName)
	}
	if typ, _ := b["type"].(string); typ != unit {
		t.Errorf("bouncer %s last pulled as %q, want %q", debName, b["type"], unit)
	}
	t.Logf("cscli bouncers list: %s type=%v version=%v last_pull=%v", debName, b["type"], b["version"], b["last_pull"])

	// Removing Debian's package, stopped and disabled, changes nothing.
	stop = m.startProbe(oldBan, newBan)
	purged, err := m.sh("apt-get purge -y -q " + debUnit + " 2>&1 | grep -v 'Reading database'")
	p := stop()
	t.Logf("apt-get purge %s:\n%s", debUnit, purged)
	t.Logf("probe across the purge of Debian's package: %s", p)
	if err != nil {
		t.Fatalf("apt-get purge %s: %v", debUnit, err)
	}
	if p.checks < 3 || p.gaps > 0 || len(p.errs) > 0 {
		t.Errorf("purging Debian's package lifted a ban: %s", p)
	}
	if got := m.active(unit); got != "active" {
		t.Errorf("%s is %s after Debian's package was purged", unit, got)
	}
}

// oldSets lists the sets of Debian's bouncer still in the kernel: ipsets
// and nftables sets named exactly blacklists_ipv4/6 (ours add a suffix).
func (m *machine) oldSets() []string {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	old := map[string]bool{"crowdsec-blacklists": true, "crowdsec6-blacklists": true}
	var left []string
	out, err := m.netns(ctx, "ipset", "list", "-n")
	if err != nil {
		m.t.Fatal(err)
	}
	for _, n := range strings.Fields(string(out)) {
		if old[n] {
			left = append(left, "ipset "+n)
		}
	}
	out, err = m.netns(ctx, "nft", "list", "sets")
	if err != nil {
		m.t.Fatal(err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "set" && old[f[1]] {
			left = append(left, "nft set "+f[1])
		}
	}
	return left
}

// purge removes the package and checks nothing of ours is left.
func (m *machine) purge(registered string) {
	t := m.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if objs, err := m.bouncerObjects(ctx); err != nil || len(objs) == 0 {
		t.Fatalf("before purge: no bouncer objects to remove (%v): the purge check would prove nothing", err)
	}
	out := m.must("apt-get purge -y -q " + unit + " 2>&1 | grep -v 'Reading database'")
	t.Logf("apt-get purge %s:\n%s", unit, out)
	objs, err := m.bouncerObjects(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) > 0 {
		t.Errorf("after purge, left in the kernel: %q", objs)
	}
	if registered != "" {
		if _, ok := m.bouncers()[registered]; ok {
			t.Errorf("bouncer %s still registered after purge", registered)
		}
	}
	if left := m.must("ls -d /var/lib/cs-journal-bouncer " + ourConf + "* 2>/dev/null || true"); strings.TrimSpace(left) != "" {
		t.Errorf("after purge, left on disk: %s", left)
	}
}

// Debian's bouncer in the mode its postinst picked (nftables here) is
// replaced by ours with its key, with no gap (migrate); restart and
// reinstall leave no gap; purge leaves nothing.
func TestPackageMigrateDefaultModeRestartReinstallPurge(t *testing.T) {
	t.Parallel()
	m := boot(t)
	m.startDebianBouncer("")
	debName := strings.TrimSpace(m.must("cat " + debConf + ".id"))
	m.migrate()

	stop := m.startProbe(oldBan, newBan)
	pid := m.mainPID(unit)
	m.must("systemctl restart " + unit)
	if p := m.mainPID(unit); p == pid || m.active(unit) != "active" {
		t.Fatalf("restart: main pid %s → %s, %s", pid, p, m.active(unit))
	}
	restart := stop()
	t.Logf("probe across systemctl restart: %s", restart)

	stop = m.startProbe(oldBan, newBan)
	pid = m.mainPID(unit)
	out, err := m.installDeb("--reinstall")
	reinstall := stop()
	t.Logf("apt install --reinstall:\n%s", out)
	t.Logf("probe across apt install --reinstall: %s", reinstall)
	if err != nil {
		t.Fatal(err)
	}
	if p := m.mainPID(unit); p == pid || m.active(unit) != "active" {
		t.Fatalf("reinstall did not restart the service: main pid %s → %s, %s", pid, p, m.active(unit))
	}
	for name, p := range map[string]probe{"restart": restart, "reinstall": reinstall} {
		if p.checks < 3 || p.gaps > 0 {
			t.Errorf("%s: %s", name, p)
		}
	}
	m.purge(debName)
}

// Debian's bouncer in iptables mode (what its postinst picks on an
// iptables-legacy host): migrated with no gap; a SIGSTOPped daemon is restarted by
// systemd's watchdog with the bans enforced throughout.
func TestPackageMigrateIptablesWatchdog(t *testing.T) {
	t.Parallel()
	m := boot(t)
	m.startDebianBouncer("iptables")
	m.migrate()
	if got := m.localValue(ourConf+".local", "mode"); got != "iptables" {
		t.Fatalf("mode %q, want iptables", got)
	}

	pid := m.mainPID(unit)
	stop := m.startProbe(oldBan, newBan)
	m.must("kill -STOP " + pid)
	// WatchdogSec=30s, then SIGABRT, SIGKILL after TimeoutAbortSec=15s,
	// RestartSec=5s: about 50s.
	restarted := poll(120*time.Second, func() bool {
		p := m.mainPID(unit)
		return p != pid && p != "0" && m.active(unit) == "active"
	})
	p := stop()
	t.Logf("probe while stopped and restarted by the watchdog: %s", p)
	journal := m.must("journalctl -u " + unit + " --no-pager | grep -iE 'watchdog|restart' | tail -5")
	t.Logf("journal:\n%s", journal)
	if !restarted {
		t.Fatalf("not restarted after SIGSTOP: %s", m.must("systemctl status --no-pager "+unit+" || true"))
	}
	if !strings.Contains(strings.ToLower(journal), "watchdog") {
		t.Errorf("journal does not show a watchdog timeout")
	}
	if p.checks < 3 || p.gaps > 0 {
		t.Errorf("bans not enforced throughout: %s", p)
	}
	var status string
	ok := poll(30*time.Second, func() bool {
		status, _ = m.sh("systemctl status --no-pager " + unit)
		return strings.Contains(status, `Status: "enforcing 2 bans`)
	})
	if !ok {
		t.Errorf("no STATUS line with the bans: %s", status)
	}
	m.waitDropped(oldBan, pullWithin)
}

// No bouncer before: the package registers its own key with cscli, runs,
// and deletes that bouncer again on purge.
func TestPackageFreshInstallRegisters(t *testing.T) {
	t.Parallel()
	m := boot(t)
	m.must("apt-get purge -y -q " + debUnit + " >/dev/null 2>&1")
	if !poll(60*time.Second, func() bool { return m.active("crowdsec") == "active" }) {
		t.Fatal("crowdsec not active")
	}
	out, err := m.installDeb("")
	t.Logf("apt install (no prior bouncer):\n%s", out)
	if err != nil {
		t.Fatal(err)
	}
	name := strings.TrimSpace(m.must("cat " + ourConf + ".id"))
	if !strings.HasPrefix(name, "cs-journal-bouncer-") || !strings.Contains(out, "registered bouncer "+name) {
		t.Fatalf("registered %q; transcript does not say so", name)
	}
	if _, ok := m.bouncers()[name]; !ok {
		t.Fatalf("%s not in cscli bouncers list", name)
	}
	if got := m.active(unit); got != "active" {
		t.Fatalf("%s is %s", unit, got)
	}
	m.must("cscli decisions add --ip " + fresh.String() + " -d 4h >/dev/null 2>&1")
	e := m.waitDropped(fresh, pullWithin)
	t.Logf("%s dropped via %s", fresh, e.how)
	m.purge(name)
}

// No crowdsec at all: the package installs, does not start, and says what
// to do.
func TestPackageWithoutCrowdsec(t *testing.T) {
	t.Parallel()
	m := boot(t)
	m.must("apt-get purge -y -q " + debUnit + " crowdsec >/dev/null 2>&1")
	out, err := m.installDeb("--no-install-recommends")
	t.Logf("apt install (no crowdsec):\n%s", out)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.must("dpkg-query -W -f '${Status}' " + unit); got != "install ok installed" {
		t.Fatalf("package state %q", got)
	}
	if got := m.active(unit); got == "active" || got == "activating" {
		t.Fatalf("%s is %s with no credentials", unit, got)
	}
	for _, want := range []string{"cscli not found", "NOT started", "api_key"} {
		if !strings.Contains(out, want) {
			t.Errorf("transcript lacks %q", want)
		}
	}
}
