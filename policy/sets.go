package policy

import (
	"net/netip"
	"strings"
)

// domainSet is a set of lowercased domains.
type domainSet struct {
	set  map[string]bool
	list []string // in the order of the configuration
}

func newDomainSet(field string, domains []string, bad func(field, format string, args ...any)) domainSet {
	s := domainSet{set: map[string]bool{}}
	for _, d := range domains {
		d = strings.ToLower(strings.TrimSpace(d))
		if d == "" || strings.ContainsAny(d, "@ \t") {
			bad(field, "%q is not a domain", d)
			continue
		}
		if !s.set[d] {
			s.set[d] = true
			s.list = append(s.list, d)
		}
	}
	return s
}

func (s domainSet) has(domain string) bool {
	return domain != "" && s.set[strings.ToLower(domain)]
}

// addrSet matches addresses by exact address, by domain ("example.com" or
// "@example.com") or by local part in any domain ("postmaster"), all
// without regard to case.
type addrSet struct {
	addrs, domains, locals map[string]bool
}

func newAddrSet(field string, entries []string, bad func(field, format string, args ...any)) addrSet {
	s := addrSet{addrs: map[string]bool{}, domains: map[string]bool{}, locals: map[string]bool{}}
	for _, e := range entries {
		e = strings.ToLower(strings.TrimSpace(e))
		at := strings.LastIndexByte(e, '@')
		switch {
		case e == "" || strings.ContainsAny(e, " \t<>"):
			bad(field, "%q is not an address, domain or local part", e)
		case at == 0:
			s.domains[e[1:]] = true
		case at > 0:
			s.addrs[e] = true
		case strings.Contains(e, "."):
			s.domains[e] = true
		default:
			s.locals[e] = true
		}
	}
	return s
}

func (s addrSet) empty() bool { return len(s.addrs)+len(s.domains)+len(s.locals) == 0 }

// match reports whether addr, or its domain, is in the set.
func (s addrSet) match(addr string) bool {
	local, _ := splitAddr(addr)
	return s.matchRecipient(addr, local)
}

// matchRecipient reports whether addr, its domain or its local part is in
// the set.
func (s addrSet) matchRecipient(addr, local string) bool {
	if s.empty() {
		return false
	}
	_, domain := splitAddr(addr)
	return s.addrs[strings.ToLower(addr)] || s.domains[strings.ToLower(domain)] || s.locals[strings.ToLower(local)]
}

// parsePrefixes parses networks in CIDR notation or single addresses.
func parsePrefixes(field string, list []string, bad func(field, format string, args ...any)) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
		} else if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
		} else {
			bad(field, "%q is not an address or network", s)
		}
	}
	return out
}

func inPrefixes(a netip.Addr, list []netip.Prefix) bool {
	a = a.Unmap()
	for _, p := range list {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
