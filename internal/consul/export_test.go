package consul

// PinnedEventSize is the size, as the user event limit counts it, of the
// event of spec pinning exactly names: for tests that choose a client's
// event size limit to force a split.
func PinnedEventSize(spec Spec, names []string) int {
	spec = spec.WithDefaults()
	return userEventSize(eventName, encodePayload(spec.Prefix, sessionPlaceholder), anchoredFilter(names), spec.ServiceFilter, spec.TagFilter)
}
