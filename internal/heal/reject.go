package heal

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// rejKey names one refused kernel entry.
type rejKey struct {
	prefix netip.Prefix
	origin int
}

// kernelErr separates entries the backend refused from real failures: a
// refused entry cannot be fixed by replaying, so it is reported (once) and
// the rest of the batch counts as enforced; anything else is returned for
// the repair ladder.
func (e *Enforcer) kernelErr(err error) error {
	rejected, rest := backend.Rejected(err)
	e.reportRejections(rejected)
	return rest
}

// reportRejections logs and counts the refused entries not reported yet:
// every full resync and replay refuses them again, and a warning or a
// counter bump per replay would bury the news. The entry stays in the
// journal (a later configuration may accept it) and is never retried in a
// loop.
func (e *Enforcer) reportRejections(rs []backend.Rejection) {
	if len(rs) == 0 {
		return
	}
	fresh := map[string][]backend.Rejection{}
	for _, r := range rs {
		k := rejKey{r.Entry.Prefix, r.Entry.Origin}
		if _, ok := e.reported[k]; ok {
			continue
		}
		e.reported[k] = r.Reason
		fresh[r.Reason] = append(fresh[r.Reason], r)
	}
	for _, reason := range slices.Sorted(maps.Keys(fresh)) {
		group := fresh[reason]
		first := group[0]
		e.log.Warn("entries not enforced: the backend refuses them with this configuration; they stay in the journal and are not retried",
			"reason", reason, "entries", len(group), "first", first.Entry.Prefix, "err", first.Err)
		if e.onReject != nil {
			e.onReject(reason, len(group))
		}
	}
	n := len(e.reported)
	e.health.update(func(h *Health) { h.RejectedEntries = n })
}

// forgetRejections drops reported entries whose prefix left the view, so a
// ban that comes back later and is refused again is reported again.
func (e *Enforcer) forgetRejections() {
	if len(e.reported) == 0 {
		return
	}
	v := e.j.View()
	for k := range e.reported {
		if len(v.ForPrefix(k.prefix)) == 0 {
			delete(e.reported, k)
		}
	}
	n := len(e.reported)
	e.health.update(func(h *Health) { h.RejectedEntries = n })
}

// isRejected reports whether the backend refused en and it was reported:
// it is not in the kernel and must not be expected there.
func (e *Enforcer) isRejected(en backend.Entry) bool {
	if len(e.reported) == 0 {
		return false
	}
	_, ok := e.reported[rejKey{en.Prefix, en.Origin}]
	return ok
}
