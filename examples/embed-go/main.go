// embed-go maps Signal events to vendor requests from Go, the way Signal's
// delivery workers embed the runtime: a pool of goroutines, each locked to
// its own OS thread and owning one engine.
//
//	embed-go [-workers N] [-watchdog=false] [-v] BLUEPRINT_DIR CONFIG < events
//
// Events are read from stdin (NDJSON, a JSON array or one object, split by
// the library's reader exactly as `blueprint dry-run` splits them) and one
// outcome line per event is written to stdout, in input order, so the output
// is byte for byte what `blueprint dry-run BLUEPRINT_DIR --config CONFIG`
// prints.  Exit status: 0 every event judged, 1 usage, 2 invalid blueprint or
// config (as dry-run).
//
// Threads and sharing:
//   - The blueprint and the config are loaded once and shared by every
//     engine: bp_engine_new only reads them, they are never written after
//     loading, and they outlive every engine (freed after the workers end).
//   - An engine (one sandboxed Lua state) is not thread-safe.  Each worker
//     goroutine calls runtime.LockOSThread, then creates, uses and frees its
//     engine on that thread only: the sandbox's watchdog signals the thread
//     that runs a call, and ctx.json keeps a per-thread buffer.
//   - The watchdog: see watchdog_setup below (-watchdog=false turns it off).
//   - Event text is copied into Go memory; outcome lines are copied out of
//     the engine's buffers (C.GoBytes) before the next event, and every C
//     allocation (C.CString, the worker state) is freed.
package main

/*
#cgo pkg-config: blueprint
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <blueprint.h>

// The sandbox's watchdog interrupts a long mapping call with a real-time
// signal (SIGRTMIN+2) on the thread running it.  The library installs its
// handler (with SA_ONSTACK, as cgo requires) only over the default
// disposition, and the Go runtime has put its own handler on every signal,
// so a Go embedder either gives the watchdog its signal back before the
// first engine (Go ignores a real-time signal that os/signal does not ask
// for) or turns the watchdog off, and the Lua count hook then checks the
// budgets on every call (mapping ~5-10% slower).  Returns the signal, 0 for
// none, -1 with err set.
static int watchdog_setup(int on, bp_error *err)
{
#ifdef BP_VERSION_MAJOR
    if (!on) return bp_watchdog_config(0, err) < 0 ? -1 : 0;
    int sig = bp_watchdog_signal();
#else
    if (!on) { bp_error_set(err, "this library cannot turn its watchdog off"); return -1; }
    int sig = SIGRTMIN + 2;
#endif
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    if (sig > 0 && sigaction(sig, &sa, NULL) != 0) {
        bp_error_set(err, "cannot reset signal %d for the watchdog", sig);
        return -1;
    }
    return sig;
}

// What handles sig now: 1 a handler with SA_ONSTACK, 0 another, -1 none.
static int handler_on_stack(int sig)
{
    struct sigaction sa;
    if (sig <= 0 || sigaction(sig, NULL, &sa) != 0) return -1;
    if (!(sa.sa_flags & SA_SIGINFO) && (sa.sa_handler == SIG_DFL || sa.sa_handler == SIG_IGN)) return -1;
    return (sa.sa_flags & SA_ONSTACK) ? 1 : 0;
}

// One worker's C state: its engine, a reusable outcome and output line.
typedef struct worker {
    bp_engine *engine;
    bp_outcome outcome;
    bp_buf line;
} worker;

static size_t max_event_bytes(void)
{
    bp_limits l;
    bp_limits_default(&l);
    return l.json.max_bytes;
}

// A new engine for bp + cfg with the default budgets (dry-run's), or NULL
// with err set.
static worker *worker_new(const bp_blueprint *bp, const bp_config *cfg, bp_error *err)
{
    bp_limits l;
    bp_limits_default(&l);
    bp_engine *e = bp_engine_new(bp, cfg, &l, err);
    if (!e) return NULL;
    worker *w = calloc(1, sizeof *w);
    if (!w) { bp_engine_free(e); bp_error_set(err, "out of memory"); return NULL; }
    w->engine = e;
    bp_outcome_init(&w->outcome);
    bp_buf_init(&w->line);
    return w;
}

static void worker_free(worker *w)
{
    if (!w) return;
    bp_engine_free(w->engine);
    bp_outcome_free(&w->outcome);
    bp_buf_free(&w->line);
    free(w);
}

// Judge one event and write its outcome line (no newline) into w->line;
// returns the line, valid until the worker's next call.
static const char *worker_map(worker *w, const char *ev, size_t len, long index, size_t *n)
{
    bp_engine_run(w->engine, ev, len, &w->outcome);
    bp_buf_reset(&w->line);
    bp_outcome_write_json(&w->outcome, index, &w->line);
    *n = w->line.len;
    return w->line.data ? w->line.data : "";
}

// Input that the reader could not split into an event: an error outcome
// with the reader's message, as dry-run writes it.
static const char *bad_input_line(const char *msg, long index, bp_buf *line, size_t *n)
{
    bp_outcome o;
    bp_outcome_init(&o);
    o.verdict = BP_ERROR;
    bp_buf_adds(&o.reason, msg);
    bp_buf_reset(line);
    bp_outcome_write_json(&o, index, line);
    bp_outcome_free(&o);
    *n = line->len;
    return line->data ? line->data : "";
}

static const char *error_text(const bp_error *err) { return err->msg; }

// The reader, with the error of its last call kept beside it so that Go
// needs no pointer into it.
typedef struct events {
    bp_reader *reader;
    bp_error err;
    const char *ev;
    size_t len;
} events;

static events *events_open(int fd)
{
    events *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    if (!(s->reader = bp_reader_new(fd, max_event_bytes()))) { free(s); return NULL; }
    return s;
}

static int events_next(events *s) { return (int)bp_reader_next(s->reader, &s->ev, &s->len, &s->err); }

static void events_close(events *s)
{
    if (!s) return;
    bp_reader_free(s->reader);
    free(s);
}
*/
import "C"

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"
)

// One event to judge, numbered from 0 in input order.
type job struct {
	index int64
	event []byte
}

// One outcome line, without its newline.
type result struct {
	index int64
	line  []byte
}

func boolInt(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

func die(code int, format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "embed-go: "+format+"\n", args...)
	os.Exit(code)
}

// worker owns one engine on one locked OS thread for its whole life.
func worker(bp *C.bp_blueprint, cfg *C.bp_config, ready chan<- error, jobs <-chan job, results chan<- result, wg *sync.WaitGroup) {
	defer wg.Done()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	var cerr C.bp_error
	w := C.worker_new(bp, cfg, &cerr)
	if w == nil {
		ready <- fmt.Errorf("%s", C.GoString(C.error_text(&cerr)))
		return
	}
	defer C.worker_free(w)
	ready <- nil

	for j := range jobs {
		var ev *C.char
		if len(j.event) > 0 {
			ev = (*C.char)(unsafe.Pointer(&j.event[0]))
		} else {
			ev = (*C.char)(unsafe.Pointer(C.CString("")))
		}
		var n C.size_t
		line := C.worker_map(w, ev, C.size_t(len(j.event)), C.long(j.index), &n)
		if len(j.event) == 0 {
			C.free(unsafe.Pointer(ev))
		}
		results <- result{j.index, C.GoBytes(unsafe.Pointer(line), C.int(n))}
	}
}

func main() {
	workers := flag.Int("workers", 4, "goroutines mapping events, each with its own engine on its own OS thread")
	watchdog := flag.Bool("watchdog", true, "give the sandbox's watchdog its signal (false: budgets checked by the count hook on every call)")
	verbose := flag.Bool("v", false, "say on stderr how the watchdog runs")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: embed-go [-workers N] [-watchdog=false] [-v] BLUEPRINT_DIR CONFIG < EVENTS\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 2 || *workers < 1 {
		flag.Usage()
		os.Exit(1)
	}

	// Before the first engine: the watchdog's signal (see watchdog_setup).
	var cerr C.bp_error
	wdsig := C.watchdog_setup(boolInt(*watchdog), &cerr)
	if wdsig < 0 {
		die(1, "%s", C.GoString(C.error_text(&cerr)))
	}

	// Loaded once, read-only from here on, shared by every engine.
	dir := C.CString(flag.Arg(0))
	defer C.free(unsafe.Pointer(dir))
	bp := C.bp_blueprint_load(dir, &cerr)
	if bp == nil {
		die(2, "%s", C.GoString(C.error_text(&cerr)))
	}
	defer C.bp_blueprint_free(bp)
	path := C.CString(flag.Arg(1))
	defer C.free(unsafe.Pointer(path))
	cfg := C.bp_config_load_file(bp, path, &cerr)
	if cfg == nil {
		C.bp_blueprint_free(bp)
		die(2, "%s", C.GoString(C.error_text(&cerr)))
	}
	defer C.bp_config_free(cfg)

	// The pool: every engine is made before the first event is read, so an
	// invalid blueprint fails here, like dry-run.
	jobs := make(chan job, *workers*4)
	results := make(chan result, *workers*4)
	ready := make(chan error)
	var wg sync.WaitGroup
	for i := 0; i < *workers; i++ {
		wg.Add(1)
		go worker(bp, cfg, ready, jobs, results, &wg)
	}
	var failed error
	for i := 0; i < *workers; i++ {
		if err := <-ready; err != nil && failed == nil {
			failed = err
		}
	}
	if failed != nil {
		close(jobs)
		wg.Wait()
		C.bp_config_free(cfg)
		C.bp_blueprint_free(bp)
		die(2, "%s", failed)
	}

	if *verbose {
		switch C.handler_on_stack(wdsig) {
		case 1:
			fmt.Fprintf(os.Stderr, "embed-go: watchdog on signal %d (handler with SA_ONSTACK)\n", int(wdsig))
		case 0:
			fmt.Fprintf(os.Stderr, "embed-go: watchdog on signal %d: its handler lacks SA_ONSTACK\n", int(wdsig))
		default:
			fmt.Fprintf(os.Stderr, "embed-go: no watchdog signal: budgets checked on every call\n")
		}
	}

	// The writer puts the lines back in input order.  `window` bounds the
	// events in flight, so memory stays bounded when one event is slow.
	window := make(chan struct{}, *workers*64)
	written := make(chan error, 1)
	go func() {
		out := bufio.NewWriterSize(os.Stdout, 1<<16)
		pending := map[int64][]byte{}
		var next int64
		for r := range results {
			pending[r.index] = r.line
			for {
				line, ok := pending[next]
				if !ok {
					break
				}
				delete(pending, next)
				out.Write(line)
				out.WriteByte('\n')
				next++
				<-window
			}
		}
		written <- out.Flush()
	}()

	// The reader (this goroutine): the library splits stdin into events.
	evs := C.events_open(0)
	if evs == nil {
		die(1, "cannot read the events")
	}
	var index int64
	var line C.bp_buf
	C.bp_buf_init(&line)
	for {
		st := C.events_next(evs)
		if st == C.BP_READ_END {
			break
		}
		window <- struct{}{}
		if st == C.BP_READ_EVENT {
			jobs <- job{index, C.GoBytes(unsafe.Pointer(evs.ev), C.int(evs.len))}
		} else {
			var n C.size_t
			p := C.bad_input_line(C.error_text(&evs.err), C.long(index), &line, &n)
			results <- result{index, C.GoBytes(unsafe.Pointer(p), C.int(n))}
		}
		index++
	}
	C.bp_buf_free(&line)
	C.events_close(evs)
	close(jobs)
	wg.Wait()
	close(results)
	if err := <-written; err != nil {
		die(1, "could not write the output: %v", err)
	}
}
