package simagent

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/consul/api"
)

// serfCheckID is the check that makes a node alive to rexec's target
// resolution and to Consul (structs.SerfCheckID).
const serfCheckID = "serfHealth"

// Register puts every virtual node in the catalog with a passing
// serfHealth check and its services, in transactions: registering an
// unchanged node again changes nothing.
func (s *Simulator) Register(ctx context.Context) error {
	return s.register(ctx, s.cfg.Nodes)
}

func (s *Simulator) register(ctx context.Context, nodes []Node) error {
	var ops api.TxnOps
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		err := s.txn(ctx, ops)
		ops = ops[:0]
		if err != nil {
			return fmt.Errorf("simagent: register nodes: %w", err)
		}
		return nil
	}
	for _, n := range nodes {
		nodeOps := api.TxnOps{
			{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: api.Node{
				Node: n.Name, Address: cmp.Or(n.Address, "127.0.0.1"), Meta: map[string]string{MetaKey: s.cfg.ID}}}},
			{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: api.HealthCheck{
				Node: n.Name, CheckID: serfCheckID, Name: "Serf Health Status", Status: api.HealthPassing}}},
		}
		for _, sv := range n.Services {
			nodeOps = append(nodeOps, &api.TxnOp{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: n.Name,
				Service: api.AgentService{ID: cmp.Or(sv.ID, sv.Name), Service: sv.Name, Tags: sv.Tags}}})
		}
		if len(ops)+len(nodeOps) > 64 {
			if err := flush(); err != nil {
				return err
			}
		}
		ops = append(ops, nodeOps...)
	}
	return flush()
}

// Deregister removes every virtual node from the catalog.
func (s *Simulator) Deregister(ctx context.Context) error {
	var ops api.TxnOps
	for i, n := range s.cfg.Nodes {
		ops = append(ops, &api.TxnOp{Node: &api.NodeTxnOp{Verb: api.NodeDelete, Node: api.Node{Node: n.Name}}})
		if len(ops) == 64 || i == len(s.cfg.Nodes)-1 {
			if err := s.txn(ctx, ops); err != nil {
				return fmt.Errorf("simagent: deregister nodes: %w", err)
			}
			ops = nil
		}
	}
	return nil
}

// keepRegistered registers again the nodes Consul removed. The leader
// reaps, every reconcile interval (a minute), each node whose serfHealth
// check has no gossip member behind it — every virtual node. A blocking
// query on the simulator's nodes wakes on such changes only.
func (s *Simulator) keepRegistered() {
	defer s.wg.Done()
	var index uint64
	for s.ctx.Err() == nil {
		q := &api.QueryOptions{NodeMeta: map[string]string{MetaKey: s.cfg.ID}, WaitIndex: index, WaitTime: 5 * time.Minute}
		nodes, meta, err := s.api.Catalog().Nodes(q.WithContext(s.ctx))
		if err != nil {
			if s.ctx.Err() == nil {
				s.cfg.Logger.Warn("simagent: watch catalog", slog.Any("error", err))
				select {
				case <-s.ctx.Done():
				case <-time.After(time.Second):
				}
			}
			continue
		}
		index = meta.LastIndex
		if len(nodes) >= len(s.cfg.Nodes) {
			continue
		}
		present := map[string]bool{}
		for _, n := range nodes {
			present[n.Node] = true
		}
		var missing []Node
		for _, n := range s.cfg.Nodes {
			if !present[n.Name] {
				missing = append(missing, n)
			}
		}
		if err := s.register(s.ctx, missing); err != nil && s.ctx.Err() == nil {
			s.cfg.Logger.Warn("simagent: register reaped nodes again", slog.Int("nodes", len(missing)), slog.Any("error", err))
		}
	}
}

// txn runs ops in one transaction; an operation's error fails it.
func (s *Simulator) txn(ctx context.Context, ops api.TxnOps) error {
	s.stats.txns.Add(1)
	ok, resp, _, err := s.api.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return err
	}
	if !ok {
		if resp != nil && len(resp.Errors) > 0 {
			return errors.New(resp.Errors[0].What)
		}
		return errors.New("transaction rolled back")
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
