package iptables

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// TestConfigValidation: New rejects what ipset and iptables cannot take,
// every value at once, each as a *backend.ConfigError naming the upstream
// key and the value (the user's -t output). Aliases, letter case and
// "both families off" are internal/config's rules, tested there.
func TestConfigValidation(t *testing.T) {
	x := strings.Repeat
	tests := []struct {
		name string
		cfg  Config
		want []string // the errors' messages; nil means valid
	}{
		{"defaults", Config{}, nil},
		{"ipset mode", Config{Mode: "ipset", SetName4: "a", SetName6: "b"}, nil},
		{"bad mode", Config{Mode: "pf"}, []string{`mode: "pf" is not a mode of this backend (iptables or ipset)`}},
		{"set name too long for origins", Config{SetName4: x("x", 25)}, []string{`blacklists_ipv4: "` + x("x", 25) +
			`" is 25 characters long; at most 24 are allowed (ipset names have at most 31, and mode iptables appends "-<origin>-t")`}},
		{"set name fits ipset mode", Config{Mode: "ipset", SetName4: x("x", 29)}, nil},
		{"set name too long ipset mode", Config{Mode: "ipset", SetName6: x("x", 30)}, []string{`blacklists_ipv6: "` + x("x", 30) +
			`" is 30 characters long; at most 29 are allowed (ipset names have at most 31, and mode ipset appends "-t")`}},
		{"set name too long, upstream default length", Config{SetName4: "crowdsec-blacklists-way-too-long"}, []string{
			`blacklists_ipv4: "crowdsec-blacklists-way-too-long" is 32 characters long; at most 24 are allowed (ipset names have at most 31, and mode iptables appends "-<origin>-t")`}},
		{"set name with space", Config{SetName4: "a b"}, []string{`blacklists_ipv4: "a b" is not an ipset name: only printable ASCII without spaces, quotes or backslashes`}},
		{"same names", Config{SetName4: "a", SetName6: "a"}, []string{`blacklists_ipv6: "a" is the same as blacklists_ipv4; an ipset holds one family, the families need two sets`}},
		{"same names, one family", Config{SetName4: "a", SetName6: "a", DisableIPv6: true}, nil},
		{"bad set type", Config{SetType: "hash:ip,port"}, []string{`ipset_type: "hash:ip,port" is not a set type of this backend (hash:net or hash:ip)`}},
		{"alias not resolved here", Config{SetType: "nethash"}, []string{`ipset_type: "nethash" is not a set type of this backend (hash:net or hash:ip)`}},
		{"negative size", Config{MaxElem: -5}, []string{`ipset_size: -5 is not an ipset maxelem (1-2147483647)`}},
		{"size past maxelem", Config{MaxElem: 1 << 31}, []string{`ipset_size: 2147483648 is not an ipset maxelem (1-2147483647)`}},
		{"bad deny action", Config{DenyAction: "ACCEPT"}, []string{`deny_action: "ACCEPT" is not an action of mode iptables (DROP, REJECT, TARPIT, LOG)`}},
		{"tarpit", Config{DenyAction: "TARPIT"}, nil},
		{"long log prefix", Config{DenyLogPrefix: "this prefix is far too long for iptables"}, []string{
			`deny_log_prefix: "this prefix is far too long for iptables" is not an iptables --log-prefix (at most 29 characters, without quotes, backslashes or newlines)`}},
		{"log prefix at the limit", Config{DenyLogPrefix: x("p", 29)}, nil},
		{"quote in log prefix", Config{DenyLogPrefix: `a"b`}, []string{
			`deny_log_prefix: "a\"b" is not an iptables --log-prefix (at most 29 characters, without quotes, backslashes or newlines)`}},
		{"chain jumping to itself", Config{Chains4: []string{"CROWDSEC_CHAIN"}}, []string{`iptables_chains: "CROWDSEC_CHAIN" is our own chain; it cannot jump to itself`}},
		{"bad hook chain", Config{Chains4: []string{"-INPUT"}}, []string{`iptables_chains: "-INPUT" is not a valid iptables chain name: must not start with a dash or an exclamation mark`}},
		{"chain with space, once for both families", Config{Chains4: []string{"INPUT"}, Chains6: []string{"A CHAIN"}}, []string{
			`iptables_chains: "A CHAIN" is not a valid iptables chain name: only printable ASCII without spaces, quotes or backslashes`}},
		{"hook chain too long", Config{Chains4: []string{x("C", 29)}}, []string{`iptables_chains: "` + x("C", 29) + `" is not a valid iptables chain name: longer than iptables' 28 characters`}},
		{"chains not checked in ipset mode", Config{Mode: "ipset", Chains4: []string{"-X"}}, nil},
		{"chain too long", Config{Chain: x("C", 29)}, []string{`chain: "` + x("C", 29) + `" is not a valid iptables chain name: longer than iptables' 28 characters`}},
		{"every error at once", Config{SetName4: "a b", DenyAction: "ACCEPT"}, []string{
			`blacklists_ipv4: "a b" is not an ipset name: only printable ASCII without spaces, quotes or backslashes`,
			`deny_action: "ACCEPT" is not an action of mode iptables (DROP, REJECT, TARPIT, LOG)`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			orig := tc.cfg
			orig.Chains4 = slices.Clone(tc.cfg.Chains4)
			b, err := New(tc.cfg)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("New() error = %v, want nil", err)
				}
				if b.cfg.SetType != SetTypeNet && b.cfg.SetType != SetTypeIP {
					t.Fatalf("SetType not defaulted: %q", b.cfg.SetType)
				}
				return
			}
			if !errors.Is(err, backend.ErrInvalidConfig) {
				t.Fatalf("New() error = %v, want backend.ErrInvalidConfig", err)
			}
			var ce *backend.ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("New() error %v holds no *backend.ConfigError", err)
			}
			if got := strings.Split(err.Error(), "\n"); !slices.Equal(got, tc.want) {
				t.Fatalf("New() errors =\n%q\nwant\n%q", got, tc.want)
			}
			if !slices.Equal(orig.Chains4, tc.cfg.Chains4) {
				t.Fatal("New modified the caller's config")
			}
		})
	}
}

func TestValidate(t *testing.T) {
	netB, _ := New(Config{})
	ipB, _ := New(Config{SetType: "hash:ip"})
	no6, _ := New(Config{DisableIPv6: true})
	p := netip.MustParsePrefix
	tests := []struct {
		name string
		b    *Backend
		e    backend.Entry
		ok   bool
	}{
		{"v4 host", netB, backend.Entry{Prefix: p("192.0.2.1/32")}, true},
		{"v4 range", netB, backend.Entry{Prefix: p("198.51.100.0/24")}, true},
		{"v6 range", netB, backend.Entry{Prefix: p("2001:db8::/32")}, true},
		{"v4 /0", netB, backend.Entry{Prefix: p("0.0.0.0/0")}, false},
		{"v6 /0", netB, backend.Entry{Prefix: p("::/0")}, false},
		{"unmasked", netB, backend.Entry{Prefix: p("192.0.2.1/24")}, false},
		{"mapped", netB, backend.Entry{Prefix: p("::ffff:192.0.2.1/128")}, false},
		{"invalid", netB, backend.Entry{}, false},
		{"negative origin", netB, backend.Entry{Prefix: p("192.0.2.1/32"), Origin: -1}, false},
		{"huge origin", netB, backend.Entry{Prefix: p("192.0.2.1/32"), Origin: 10000}, false},
		{"hash:ip host", ipB, backend.Entry{Prefix: p("2001:db8::1/128")}, true},
		{"hash:ip range", ipB, backend.Entry{Prefix: p("192.0.2.0/24")}, false},
		{"v6 disabled", no6, backend.Entry{Prefix: p("2001:db8::1/128")}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.b.Validate(tc.e)
			if (err == nil) != tc.ok {
				t.Fatalf("Validate(%v) = %v, want ok=%v", tc.e.Prefix, err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidEntry) {
				t.Fatalf("error %v is not ErrInvalidEntry", err)
			}
		})
	}
}

func TestTimeoutFor(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		until time.Time
		secs  uint32
		live  bool
	}{
		{"zero is permanent", time.Time{}, 0, true},
		{"expired", now.Add(-time.Second), 0, false},
		{"exactly now", now, 0, false},
		{"sub-second rounds up to 1", now.Add(time.Millisecond), 1, true},
		{"4h", now.Add(4 * time.Hour), 14400, true},
		{"fraction rounds up", now.Add(1500 * time.Millisecond), 2, true},
		{"capped", now.Add(10000 * time.Hour), maxTimeout, true},
		{"at cap", now.Add(maxTimeout * time.Second), maxTimeout, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			secs, live := timeoutFor(tc.until, now)
			if secs != tc.secs || live != tc.live {
				t.Fatalf("timeoutFor = %d,%v want %d,%v", secs, live, tc.secs, tc.live)
			}
		})
	}
}

func TestHashSizeFor(t *testing.T) {
	tests := []struct{ n, want int }{{0, 1024}, {2048, 1024}, {2050, 2048}, {100000, 65536}, {131072, 65536}, {200000, 131072}}
	for _, tc := range tests {
		if got := hashSizeFor(tc.n); int(got) != tc.want {
			t.Errorf("hashSizeFor(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}

// TestBuildADTGolden pins the wire format of one IPv4 entry: a kernel
// that rejects a field fails the whole batch, so the bytes matter.
func TestBuildADTGolden(t *testing.T) {
	m, n := buildADT(ipsetCmdAdd, "s", []kEntry{newKEntry(netip.MustParsePrefix("192.0.2.0/24"), 300, 0)}, true, true)
	if n != 1 {
		t.Fatalf("n = %d", n)
	}
	b, err := m.finish(7)
	if err != nil {
		t.Fatal(err)
	}
	le := func(v uint16) []byte { return binary.NativeEndian.AppendUint16(nil, v) }
	le32 := func(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }
	var want []byte
	want = append(want, le32(88)...)           // nlmsg_len
	want = append(want, le(6<<8|9)...)         // IPSET_CMD_ADD
	want = append(want, le(0x5)...)            // REQUEST|ACK
	want = append(want, le32(7)...)            // seq
	want = append(want, 0, 0, 0, 0)            // pid
	want = append(want, 2, 0, 0, 0)            // nfgenmsg AF_INET, v0, res 0
	want = append(want, le(5)...)              // PROTOCOL
	want = append(want, le(1)...)              //
	want = append(want, 6, 0, 0, 0)            // 6 + pad
	want = append(want, le(6)...)              // SETNAME "s\0"
	want = append(want, le(2)...)              //
	want = append(want, 's', 0, 0, 0)          //
	want = append(want, le(8)...)              // LINENO 0 (host order)
	want = append(want, le(9)...)              //
	want = append(want, le32(0)...)            //
	want = append(want, le(44)...)             // ADT nest
	want = append(want, le(8|nlaFNested)...)   //
	want = append(want, le(40)...)             // DATA nest
	want = append(want, le(7|nlaFNested)...)   //
	want = append(want, le(12)...)             // IP nest
	want = append(want, le(1|nlaFNested)...)   //
	want = append(want, le(8)...)              // IPADDR_IPV4 net order
	want = append(want, le(1|nlaFNetOrder)...) //
	want = append(want, 192, 0, 2, 0)          //
	want = append(want, le(5)...)              // CIDR 24
	want = append(want, le(3)...)              //
	want = append(want, 24, 0, 0, 0)           //
	want = append(want, le(8)...)              // TIMEOUT 300 big-endian
	want = append(want, le(6|nlaFNetOrder)...) //
	want = append(want, 0, 0, 1, 44)           //
	want = append(want, le(8)...)              // entry LINENO 1
	want = append(want, le(9)...)              //
	want = append(want, le32(1)...)            //
	if !slices.Equal(b, want) {
		t.Fatalf("message bytes\n got %v\nwant %v", b, want)
	}
}

// TestBuildADTRoundTrip decodes built batches: every entry comes back, in
// order, and every message respects the batch and 16-bit nest limits.
func TestBuildADTRoundTrip(t *testing.T) {
	var entries []kEntry
	for i := range 2500 {
		a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)})
		entries = append(entries, newKEntry(netip.PrefixFrom(a, 128), 10, 0))
	}
	entries = append(entries, newKEntry(netip.MustParsePrefix("198.18.0.0/15"), 0, 0))
	tests := []struct {
		name     string
		withCIDR bool
		timeout  bool
	}{{"net with timeout", true, true}, {"ip without timeout", false, false}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []netip.Prefix
			msgs := 0
			for done := 0; done < len(entries); {
				m, n := buildADT(ipsetCmdDel, "set", entries[done:], tc.withCIDR, tc.timeout)
				b, err := m.finish(1)
				if err != nil {
					t.Fatal(err)
				}
				if n == 0 || n > batchEntries || len(b) > 65535 {
					t.Fatalf("batch of %d entries, %d bytes", n, len(b))
				}
				msgs++
				ms, err := parseMessages(b)
				if err != nil || len(ms) != 1 {
					t.Fatalf("parseMessages: %v (%d)", err, len(ms))
				}
				attrs, err := parseAttrs(ms[0].payload[nfgenHdrLen:])
				if err != nil {
					t.Fatal(err)
				}
				for _, a := range attrs {
					if a.kind() != attrADT {
						continue
					}
					datas, err := parseAttrs(a.data)
					if err != nil {
						t.Fatal(err)
					}
					for _, d := range datas {
						p, err := parseEntry(d.data)
						if err != nil {
							t.Fatal(err)
						}
						got = append(got, p)
					}
				}
				done += n
			}
			if msgs != 3 {
				t.Errorf("%d messages, want 3", msgs)
			}
			if len(got) != len(entries) {
				t.Fatalf("decoded %d entries, want %d", len(got), len(entries))
			}
			for i, e := range entries {
				want := e.prefix()
				if !tc.withCIDR {
					want = netip.PrefixFrom(e.prefix().Addr(), e.prefix().Addr().BitLen())
				}
				if got[i] != want {
					t.Fatalf("entry %d = %s, want %s", i, got[i], want)
				}
			}
		})
	}
}

func TestEchoedLineNo(t *testing.T) {
	m := ipsetMsg(ipsetCmdAdd, flagsAck, "s")
	m.u32host(attrLineNo, 42)
	b, _ := m.finish(1)
	if got := echoedLineNo(b[nlmsgHdrLen:]); got != 42 {
		t.Fatalf("echoedLineNo = %d, want 42", got)
	}
	if got := echoedLineNo(nil); got != 0 {
		t.Fatalf("echoedLineNo(nil) = %d", got)
	}
}

func TestKernelErrorIs(t *testing.T) {
	tests := []struct {
		errno  int32
		target error
	}{{2, ErrSetNotFound}, {ipsetErrTypeSpec, ErrSetFull}, {ipsetErrPrivate + 4, ErrSetBusy}}
	for _, tc := range tests {
		err := error(&KernelError{Op: "x", Set: "s", Errno: tc.errno})
		if !errors.Is(err, tc.target) {
			t.Errorf("errno %d is not %v", tc.errno, tc.target)
		}
		if errors.Is(err, ErrInvalidEntry) {
			t.Errorf("errno %d matches ErrInvalidEntry", tc.errno)
		}
	}
}

func TestTokenizeQuote(t *testing.T) {
	tests := []struct {
		line string
		want []string
	}{
		{`-A X -j LOG --log-prefix "crowdsec: "`, []string{"-A", "X", "-j", "LOG", "--log-prefix", "crowdsec: "}},
		{`--comment "a \"b\" c"`, []string{"--comment", `a "b" c`}},
		{`--comment ""`, []string{"--comment", ""}},
		{`a   b`, []string{"a", "b"}},
	}
	for _, tc := range tests {
		got := tokenize(tc.line)
		if !slices.Equal(got, tc.want) {
			t.Errorf("tokenize(%q) = %q, want %q", tc.line, got, tc.want)
		}
		if back := tokenize(joinQuoted(got)); !slices.Equal(back, got) {
			t.Errorf("round trip of %q = %q", got, back)
		}
	}
}

// ensure declares origins (keeping names already set) and runs Ensure.
func ensure(ctx context.Context, b *Backend, origins ...int) error {
	o := maps.Clone(b.originNames)
	if o == nil {
		o = backend.Origins{}
	}
	for _, i := range origins {
		if _, ok := o[i]; !ok {
			o[i] = fmt.Sprint("origin-", i)
		}
	}
	b.SetOrigins(o)
	return b.Ensure(ctx)
}
