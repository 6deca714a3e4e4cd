package simagent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
)

// userEventPrefix is what Consul's servers put before a user event's name
// on the gossip layer (agent/consul/server_serf.go, userEventName).
const userEventPrefix = "consul:event:"

// remoteExecName is the remote-exec event's name.
const remoteExecName = "_rexec"

// userEvent is a Consul user event as gossiped (agent/user_event.go).
type userEvent struct {
	ID            string
	Name          string `codec:"n"`
	Payload       []byte `codec:"p,omitempty"`
	NodeFilter    string `codec:"nf,omitempty"`
	ServiceFilter string `codec:"sf,omitempty"`
	TagFilter     string `codec:"tf,omitempty"`
	Version       int    `codec:"v"`
}

// execEvent is the remote-exec event's payload (remoteExecEvent).
type execEvent struct {
	Prefix  string
	Session string
}

// joinGossip makes the simulator a member of the LAN gossip pool, with no
// tags: Consul's servers then neither register it in the catalog nor take
// it for a server, but it receives every user event.
func (s *Simulator) joinGossip() error {
	s.events = make(chan serf.Event, 1024)
	conf := serf.DefaultConfig()
	conf.NodeName = "rexec-simagent-" + s.cfg.ID
	conf.EventCh = s.events
	conf.Logger = log.New(io.Discard, "", 0)
	conf.MemberlistConfig = memberlist.DefaultLANConfig()
	conf.MemberlistConfig.Name = conf.NodeName
	conf.MemberlistConfig.BindAddr = s.cfg.BindAddr
	conf.MemberlistConfig.BindPort = 0 // any free port
	conf.MemberlistConfig.Logger = conf.Logger
	sf, err := serf.Create(conf)
	if err != nil {
		return fmt.Errorf("simagent: gossip member: %w", err)
	}
	// ignoreOld: events gossiped before we joined are not ours to answer.
	if _, err := sf.Join(s.cfg.Join, true); err != nil {
		_ = sf.Shutdown()
		return fmt.Errorf("simagent: join gossip at %v: %w", s.cfg.Join, err)
	}
	s.serf = sf
	return nil
}

// eventLoop handles gossiped user events until Close.
func (s *Simulator) eventLoop() {
	defer s.wg.Done()
	for {
		select {
		case <-s.ctx.Done():
			return
		case e := <-s.events:
			ue, ok := e.(serf.UserEvent)
			if !ok || ue.Name != userEventPrefix+remoteExecName {
				continue
			}
			if err := s.handleEvent(ue.Payload); err != nil {
				s.cfg.Logger.Warn("simagent: remote exec event", slog.Any("error", err))
			}
		}
	}
}

func (s *Simulator) handleEvent(raw []byte) error {
	var ue userEvent
	if err := codec.NewDecoder(bytes.NewReader(raw), &codec.MsgpackHandle{}).Decode(&ue); err != nil {
		return fmt.Errorf("decode user event: %w", err)
	}
	var ev execEvent
	if err := json.Unmarshal(ue.Payload, &ev); err != nil {
		return fmt.Errorf("decode remote exec payload: %w", err)
	}
	s.stats.events.Add(1)
	s.stats.lastEvent.Store(time.Now().UnixNano())
	match, err := newFilter(ue)
	if err != nil {
		return err // an agent logs it and ignores the event
	}
	var batch []*vnode
	for _, n := range s.cfg.Nodes {
		vn := s.byName[n.Name]
		if !match.matches(vn) {
			continue
		}
		s.stats.matched.Add(1)
		batch = append(batch, vn)
		if len(batch) == s.cfg.BatchSize {
			s.startBatch(ev, batch)
			batch = nil
		}
	}
	if len(batch) > 0 {
		s.startBatch(ev, batch)
	}
	return nil
}

// filter is an event's filters, applied to a node as the agent applies
// them to itself (shouldProcessUserEvent).
type filter struct {
	node, service, tag *regexp.Regexp
	// names, when not nil, is the exact set of names the node filter
	// matches: rexec pins targets with ^(?:a|b|c)$ of quoted names, and a
	// set lookup gives the regexp's answer without running it for each of
	// thousands of virtual nodes (an agent runs it once, on its own name).
	names map[string]bool
}

func newFilter(ue userEvent) (filter, error) {
	var f filter
	var err error
	compile := func(expr string) *regexp.Regexp {
		if expr == "" || err != nil {
			return nil
		}
		var re *regexp.Regexp
		re, err = regexp.Compile(expr)
		return re
	}
	f.node, f.service, f.tag = compile(ue.NodeFilter), compile(ue.ServiceFilter), compile(ue.TagFilter)
	if err != nil {
		return filter{}, fmt.Errorf("event filter: %w", err)
	}
	if f.node != nil {
		f.names = literalAlternation(ue.NodeFilter)
	}
	return f, nil
}

func (f filter) matches(n *vnode) bool {
	switch {
	case f.names != nil:
		if !f.names[n.name] {
			return false
		}
	case f.node != nil && !f.node.MatchString(n.name):
		return false
	}
	if f.service == nil {
		return true
	}
	for _, sv := range n.services {
		if !f.service.MatchString(sv.ID) {
			continue
		}
		if f.tag == nil {
			return true
		}
		for _, t := range sv.Tags {
			if f.tag.MatchString(t) {
				return true
			}
		}
	}
	return false
}

// literalAlternation returns the strings ^(?:a|b|c)$ matches when its
// alternatives are literal text (escaped metacharacters allowed), else nil.
func literalAlternation(expr string) map[string]bool {
	if !strings.HasPrefix(expr, "^(?:") || !strings.HasSuffix(expr, ")$") {
		return nil
	}
	body := expr[len("^(?:") : len(expr)-len(")$")]
	names := map[string]bool{}
	var cur strings.Builder
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case c == '\\':
			i++
			if i == len(body) || isWordOrSpace(body[i]) {
				return nil // \d, \b, \x41...: a class or an escape, not a literal
			}
			cur.WriteByte(body[i])
		case c == '|':
			names[cur.String()] = true
			cur.Reset()
		case strings.IndexByte(".*+?{}[]()^$", c) >= 0:
			return nil
		default:
			cur.WriteByte(c)
		}
	}
	names[cur.String()] = true
	return names
}

func isWordOrSpace(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == ' '
}
