// Package main is the benchmark program of `make bench`: it owns the performance numbers
// of DESIGN.md §12. Each suite (ca, mp, storm, location, remote, screen, dp) measures one role
// against real listeners and a real store, and prints one table whose rows are compared
// side by side in one run: the role beside its raw limit, one backend beside another, each
// against its target.
//
// Every measured phase runs for a fixed duration after a one-second warm-up, so a run is
// bounded whatever the machine:
//
//	go run -tags nobadger,nomysql,nopgx,nobbolt ./bench
//	go run -tags nobadger,nomysql,nopgx,nobbolt ./bench -suite ca -duration 10s -json bench.json
//	go run -tags nobadger,nomysql,nopgx,nobbolt ./bench -suite ca -ca-stores sqlite -cpuprofile cpu.out
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"
)

// Options are the settings every suite shares.
type Options struct {
	Duration    time.Duration // length of each measured phase
	Warmup      time.Duration // load before each measured phase, not counted
	Concurrency int           // clients in flight against an API; 0 lets the suite choose
}

// Suite is one group of measurements printed as one table.
type Suite struct {
	Name  string
	Title string
	Run   func(ctx context.Context, o Options, progress io.Writer) (Result, error)
}

// Result is what a suite measured: the table's rows and notes printed under it.
type Result struct {
	Suite string   `json:"suite"`
	Rows  []Row    `json:"rows"`
	Notes []string `json:"-"`
}

// Row is one measured number. Latencies, target and pass are absent when they do not apply
// (a raw limit has no target).
type Row struct {
	Name   string   `json:"name"`
	Value  float64  `json:"value"`
	Unit   string   `json:"unit"`
	Count  int      `json:"count"` // operations measured
	P50ms  *float64 `json:"p50_ms,omitempty"`
	P99ms  *float64 `json:"p99_ms,omitempty"`
	Target *float64 `json:"target,omitempty"` // the value must be at least this (at most with AtMost)
	AtMost bool     `json:"at_most,omitempty"`
	Pass   *bool    `json:"pass,omitempty"`
}

// suites lists every suite in the order `-suite all` runs them.
var suites = []Suite{caSuite, mpSuite, stormSuite, locationSuite, remoteSuite, screenSuite, dpSuite}

func main() {
	os.Exit(run())
}

func run() int {
	var (
		suiteName  = flag.String("suite", "all", "suite to run: all, "+suiteNames())
		duration   = flag.Duration("duration", 5*time.Second, "length of each measured phase")
		conc       = flag.Int("concurrency", 0, "clients in flight against an API (0: the suite's default)")
		jsonFile   = flag.String("json", "", "also write the results as JSON to this file")
		cpuProfile = flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	)
	flag.Parse()
	if *duration <= 0 || *duration > 10*time.Minute {
		fmt.Fprintln(os.Stderr, "bench: -duration must be between 0 and 10m")
		return 2
	}
	if *conc < 0 {
		fmt.Fprintln(os.Stderr, "bench: -concurrency must be 0 or more")
		return 2
	}
	var chosen []Suite
	for _, s := range suites {
		if *suiteName == "all" || *suiteName == s.Name {
			chosen = append(chosen, s)
		}
	}
	if len(chosen) == 0 {
		fmt.Fprintf(os.Stderr, "bench: unknown suite %q (have: all, %s)\n", *suiteName, suiteNames())
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: creating the CPU profile: %v\n", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(os.Stderr, "bench: starting the CPU profile: %v\n", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}

	fmt.Printf("go         %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	fmt.Printf("GOMAXPROCS %d\n", runtime.GOMAXPROCS(0))
	fmt.Printf("cpu        %s\n", cpuModel())
	fmt.Printf("phases     %s measured after %s warm-up\n", *duration, time.Second)

	o := Options{Duration: *duration, Warmup: time.Second, Concurrency: *conc}
	var results []Result
	for _, s := range chosen {
		fmt.Printf("\n== %s: %s\n", s.Name, s.Title)
		res, err := s.Run(ctx, o, os.Stderr)
		if err != nil {
			if errors.Is(err, context.Canceled) && ctx.Err() != nil {
				err = errors.New("interrupted")
			}
			fmt.Fprintf(os.Stderr, "bench: suite %s: %v\n", s.Name, err)
			return 1
		}
		printResult(os.Stdout, res)
		results = append(results, res)
	}
	if *jsonFile != "" {
		if err := writeJSON(*jsonFile, results); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			return 1
		}
	}
	return 0 // a missed target is a FAIL in the table, not a failed run
}

// writeJSON writes one {suite, rows} object when one suite ran, else an array of them.
func writeJSON(name string, results []Result) error {
	var v any = results
	if len(results) == 1 {
		v = results[0]
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the results: %w", err)
	}
	if err := os.WriteFile(name, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing -json: %w", err)
	}
	return nil
}

func suiteNames() string {
	var names []string
	for _, s := range suites {
		names = append(names, s.Name)
	}
	return strings.Join(names, ", ")
}

// cpuModel returns the first "model name" of /proc/cpuinfo, or "unknown".
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}
