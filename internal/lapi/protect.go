package lapi

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
)

// Resolver looks a host name up; *net.Resolver satisfies it.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// LAPIPrefixes returns the addresses of apiURL's host as single-address
// prefixes, for NormalizeOptions.Protected: a ban on LAPI's address would
// cut the bouncer off from LAPI, so the delete lifting it could never
// arrive. A host name is resolved through r within ctx (callers bound it:
// this runs at start-up); an IPv4 address is also listed in its v4-mapped
// IPv6 form. On a lookup error it returns the error and no prefixes: the
// caller decides whether to start with loopback protected only.
func LAPIPrefixes(ctx context.Context, apiURL string, r Resolver) ([]netip.Prefix, error) {
	u, err := url.Parse(apiURL)
	if err != nil {
		return nil, fmt.Errorf("LAPI address %q: %w", apiURL, err)
	}
	host := u.Hostname()
	if host == "" {
		return nil, fmt.Errorf("LAPI address %q has no host", apiURL)
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else if addrs, err = r.LookupNetIP(ctx, "ip", host); err != nil {
		return nil, fmt.Errorf("resolve LAPI host %q: %w", host, err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		a = a.WithZone("").Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
		if a.Is4() {
			m := netip.AddrFrom16(a.As16())
			out = append(out, netip.PrefixFrom(m, m.BitLen()))
		}
	}
	return out, nil
}
