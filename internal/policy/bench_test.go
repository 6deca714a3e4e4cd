package policy

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// hundredTargets is a submission to 100 nodes with two services each, one
// of them tagged prod: the policy must look at every tag. With distinct,
// every node's services differ (the worst case for building the input);
// otherwise they are the same on every node but one, as when a run is
// aimed at a service.
func hundredTargets(distinct bool) Input {
	in := submitInput("alice", []string{"submitter"}, "deploy 4.2")
	for i := range 100 {
		tags := []string{"v2", "blue"}
		if distinct {
			tags = append(tags, fmt.Sprintf("rack-%03d", i))
		}
		in.Targets = append(in.Targets, Target{
			Node:    fmt.Sprintf("node-%03d", i),
			Address: fmt.Sprintf("10.0.%d.%d", i/256, i%256),
			Services: []Service{
				{ID: "web", Name: "web", Tags: tags},
				{ID: "node-exporter", Name: "node-exporter", Tags: nil},
			},
		})
	}
	in.Targets[57].Services[0].Tags = append(slices.Clip(in.Targets[57].Services[0].Tags), "prod")
	return in
}

// BenchmarkDecide100Targets measures one decision on a run to 100 nodes.
// Besides the mean it reports the median and 99th percentile of single
// decisions, and the process's CPU time per decision (cpu-ns/op), which
// stays meaningful on a machine shared with other work.
func BenchmarkDecide100Targets(b *testing.B) {
	ctx := context.Background()
	e, err := New(ctx, Config{})
	if err != nil {
		b.Fatal(err)
	}
	for _, services := range []string{"shared", "distinct"} {
		b.Run(services+" services", func(b *testing.B) {
			in := hundredTargets(services == "distinct")
			if d, err := e.Decide(ctx, in); err != nil || d.Outcome != RequireApproval {
				b.Fatalf("Decide = %+v, %v; want require_approval", d, err)
			}
			durations := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			cpu0, cpuOK := cpuTime()
			for b.Loop() {
				start := time.Now()
				if _, err := e.Decide(ctx, in); err != nil {
					b.Fatal(err)
				}
				durations = append(durations, time.Since(start))
			}
			if cpu1, ok := cpuTime(); ok && cpuOK {
				b.ReportMetric(float64(cpu1-cpu0)/float64(len(durations)), "cpu-ns/op")
			}
			slices.Sort(durations)
			b.ReportMetric(float64(durations[len(durations)/2].Nanoseconds()), "p50-ns/op")
			b.ReportMetric(float64(durations[len(durations)*99/100].Nanoseconds()), "p99-ns/op")
		})
	}
}
