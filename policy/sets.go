package policy

import (
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/net/idna"
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
		if err := checkDomain(d); err != nil {
			bad(field, "%v", err)
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
	return domain != "" && s.set[domainKey(domain)]
}

// domainKey is the form of an address's domain that is compared with the
// configured ones: lowercased, and a domain with non-ASCII letters (a
// U-label, "bücher.example", from an SMTPUTF8 client) in its ASCII form
// ("xn--bcher-kva.example"). Postfix matches its domain lists as written,
// so a site that lists the U-label form receives mail for it, and batv,
// configured with the A-label, must see it as the same domain. A name that
// has no ASCII form is returned lowercased, and matches no configured
// domain.
func domainKey(domain string) string {
	for i := 0; i < len(domain); i++ {
		if domain[i] >= 0x80 {
			if a, err := domainName.ToASCII(domain); err == nil {
				return a
			}
			return strings.ToLower(domain)
		}
	}
	return strings.ToLower(domain)
}

// domainName is the profile a configured domain is checked with: the
// IDNA rules of a name to look up, and the hostname syntax of DNS (letters,
// digits and hyphens, labels of 1 to 63 bytes, 253 in all).
var domainName = idna.New(idna.MapForLookup(), idna.VerifyDNSLength(true), idna.BidiRule(),
	idna.StrictDomainName(true), idna.Transitional(false))

// checkDomain checks a lowercased domain of the configuration. A Unicode
// name is configured in its ASCII form (an A-label,
// "xn--bcher-kva.example"), one spelling for each domain; addresses match
// it in either form (domainKey).
func checkDomain(d string) error {
	a, err := domainName.ToASCII(d)
	switch {
	case strings.HasSuffix(d, ".") && len(d) > 1:
		return fmt.Errorf("%q: write the domain without the trailing dot", d)
	case err != nil:
		return fmt.Errorf("%q is not a domain name", d)
	case a != d:
		return fmt.Errorf("%q: write the domain in its ASCII form, %q (addresses match it in either form)", d, a)
	}
	return nil
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
		case at == 0 || (at < 0 && strings.Contains(e, ".")):
			d := strings.TrimPrefix(e, "@")
			if err := checkDomain(d); err != nil {
				bad(field, "%v", err)
			}
			s.domains[d] = true
		case at > 0:
			s.addrs[e[:at]+"@"+domainKey(e[at+1:])] = true
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
	addrLocal, domain := splitAddr(addr)
	domain = domainKey(domain)
	return s.domains[domain] || s.locals[strings.ToLower(local)] ||
		len(s.addrs) > 0 && s.addrs[strings.ToLower(addrLocal)+"@"+domain]
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
