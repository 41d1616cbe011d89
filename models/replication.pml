/*
 * The replication protocol of imds-replica, for spin.  models/README.md maps every variable
 * and step here to the code, states the bounds, and says how models/check runs it.
 *
 * Two sources own a stream of versioned events (writes and tombstones).  Every host has a
 * durable consumer per source.  The network to a host is a bag: it hands the host any
 * message in flight, in any order, and may lose it or hand it over again later.  The host
 * submits each message as a batch with its cursor (Replica.submit with a Checkpoint): the
 * log appends it to a tail of at most TAIL records that are not yet durable (group commit)
 * and the view applies it with the LWW merge; a commit makes the tail durable and only then
 * acknowledges its events.  A host may crash at any time: it keeps the durable log plus a
 * prefix of the tail (a torn write), replays that into an empty view and resumes every
 * consumer from the last durable checkpoint.  A consumer redelivers everything after the
 * host's cursor once none of its messages is in flight any more (the catch-up).  A host
 * that has caught up on both streams checks its registers and may stop.
 *
 * Knobs (cpp -D, set by models/check or by the files that #include this one):
 *   HOSTS                       host replicas (default 2)
 *   TAIL                        group-commit window, 1 or 2 (default 2)
 *   LOSS_MAX DUP_MAX CRASH_MAX  fault budgets of each host; undefined = unbounded
 *   LIVENESS                    add the LTL claim `converge` (needs every budget finite)
 *   ARRIVAL_TIE NO_SOURCE_TIE ACK_BEFORE_DURABLE CURSOR_PAST_GAP   negative controls
 *
 * Every host's state is local to its process and hosts share nothing but the final result
 * the assertions compare, so spin's partial-order reduction can prune interleavings of
 * independent host steps (here it about halves the product of two hosts' state spaces).
 */

#ifndef HOSTS
#define HOSTS 2
#endif
#define SOURCES 2
#define SEQS 2                    /* events per source */
#define EVENTS 4                  /* SOURCES * SEQS; event e is seq SEQ(e) of source SRC(e) */
#define KEYS 1
#ifndef TAIL
#define TAIL 2                    /* group-commit window: records appended, not yet durable */
#endif
#define NONE 255                  /* an empty register */
#define TOMB 0                    /* a tombstone's digest: empty, below every value's (one fixed value) */
#define ALL 15                    /* bitmask of every event */

#define SRC(e) ((e) / SEQS)
#define SEQ(e) ((e) % SEQS + 1)
#define BIT(e) (1 << (e))
#define SRCBITS(s) (((1 << SEQS) - 1) << ((s) * SEQS))
/* source s's events with seq > c: what a redelivery from cursor c sends */
#define ABOVE(s, c) (SRCBITS(s) & ~(((1 << (c)) - 1) << ((s) * SEQS)))

/* The streams: one register written and deleted by two sources whose versions collide.
 *   e0  source 0 ("fabric") seq 1  v1  value, digest 1
 *   e1  source 0            seq 2  v2  tombstone
 *   e2  source 1 ("tags")   seq 1  v1  value, digest 2   ties e0 on version: source decides
 *   e3  source 1            seq 2  v2  tombstone         ties e1 on version and digest:
 *                                                        only the source decides
 * Older writes arriving after a tombstone must not resurrect; e3 wins everywhere. */
#define VER(e) ((e) % SEQS + 1)
#define KEY(e) 0
#define DEL(e) ((e) % SEQS == 1)
#define DIG(e) (DEL(e) -> TOMB : ((e) == 0 -> 1 : 2))

/* The specification's total order (version, source, digest) as one number, 0 for an empty
 * register.  Only the assertions use it; hosts merge with `supersedes`, which the negative
 * controls break. */
#define ORD(e) ((e) == NONE -> 0 : 1 + VER(e) * 16 + SRC(e) * 4 + DIG(e))

/* What each host holds when it stops, having caught up (NONE: still running). */
byte final[HOSTS] = NONE;

/* imds_replica._merge.supersedes(new, old) */
inline supersedes(n, o, res) {
  if
  :: o == NONE -> res = true
#if defined(ARRIVAL_TIE)
  /* control: equal versions go to whichever arrived last */
  :: else -> res = (VER(n) >= VER(o))
#elif defined(NO_SOURCE_TIE)
  /* control: the order forgets the source: (version, digest) */
  :: else -> res = (VER(n) > VER(o) || (VER(n) == VER(o) && DIG(n) > DIG(o)))
#else
  :: else -> res = (VER(n) > VER(o) || (VER(n) == VER(o) && (SRC(n) > SRC(o) ||
                    (SRC(n) == SRC(o) && DIG(n) > DIG(o)))))
#endif
  fi
}

#ifdef DUP_MAX
#define DUP_OK (dups < DUP_MAX)
#define DUP_TAKE dups++
#else
#define DUP_OK true
#define DUP_TAKE skip
#endif
#ifdef LOSS_MAX
#define LOSS_OK (losses < LOSS_MAX)
#define LOSS_TAKE losses++
#else
#define LOSS_OK true
#define LOSS_TAKE skip
#endif
#ifdef CRASH_MAX
#define CRASH_OK (crashes < CRASH_MAX)
#define CRASH_TAKE crashes++
#else
#define CRASH_OK true
#define CRASH_TAKE skip
#endif

/* View.apply(event) */
inline apply(ev) {
  k = KEY(ev);
  supersedes(ev, reg[k], wins);
  if
  :: wins -> reg[k] = ev
  :: else -> skip
  fi;
  wins = 0; k = 0
}

/* submit returns: the event is acknowledged to its source */
inline acknowledge(ev) {
  acked = acked | BIT(ev);
  if
  :: DEL(ev) && ORD(ev) > tombmax[KEY(ev)] -> tombmax[KEY(ev)] = ORD(ev)
  :: else -> skip
  fi
}

/* The consumer hands one message to Replica.submit([event], checkpoint=Checkpoint(source,
 * cursor)): dedupe by seq, apply, append to the log tail with the new cursor. */
inline submit(ev) {
  s = SRC(ev);
  if
  :: SEQ(ev) > cursor[s] ->
     apply(ev);
     got = durable | BIT(ev);
     i = 0;
     do
     :: i < tail_n -> got = got | BIT(tail_ev[i]); i++
     :: else -> break
     od;
#ifdef CURSOR_PAST_GAP
     /* control: the cursor jumps to the newest seq received, over any gap */
     cursor[s] = SEQ(ev);
#else
     /* the cursor ends the contiguous prefix of seqs logged */
     do
     :: (cursor[s] < SEQS && (got & BIT(s * SEQS + cursor[s]))) -> cursor[s]++
     :: else -> break
     od;
#endif
     tail_ev[tail_n] = ev;
     tail_ck[tail_n] = cursor[s];
     tail_n++;
#ifdef ACK_BEFORE_DURABLE
     acknowledge(ev);             /* control: submit returns before the record is durable */
#endif
     /* no tombstone this host acknowledged is overtaken by an older write */
     assert(no_resurrection || ORD(reg[KEY(ev)]) >= tombmax[KEY(ev)])
  :: else -> skip                 /* a duplicate the cursor already covers */
  fi;
  s = 0; i = 0; got = 0
}

/* The log writes tail records [0, n) to disk: each record with its Checkpoint. */
inline persist(n) {
  c = 0;
  do
  :: c < n ->
     durable = durable | BIT(tail_ev[c]);
     pcur[SRC(tail_ev[c])] = tail_ck[c];
     c++
  :: else -> break
  od;
  c = 0
}

inline clear_tail() {
  c = 0;
  do
  :: c < TAIL -> tail_ev[c] = 0; tail_ck[c] = 0; c++
  :: else -> break
  od;
  tail_n = 0; c = 0
}

/* Group commit: the tail becomes durable, then submit returns for each of its events. */
inline commit() {
  persist(tail_n);
#ifndef ACK_BEFORE_DURABLE
  c = 0;
  do
  :: c < tail_n -> acknowledge(tail_ev[c]); c++
  :: else -> break
  od;
  c = 0;
#endif
  clear_tail()
}

/* Crash and restart keeping `kept` tail records (a torn write keeps a prefix): replay the
 * durable log into an empty view (MemoryLog.run), resume from the durable checkpoints. */
inline restart(kept) {
  persist(kept);
  clear_tail();
  reg[0] = NONE;
  e = 0;
  do
  :: e < EVENTS ->
     if
     :: durable & BIT(e) -> apply(e)
     :: else -> skip
     fi;
     e++
  :: else -> break
  od;
  cursor[0] = pcur[0];
  cursor[1] = pcur[1];
  /* every acknowledged event is still in force */
  e = 0;
  do
  :: e < EVENTS ->
     assert(acked_kept || !(acked & BIT(e)) || ORD(reg[KEY(e)]) >= ORD(e));
     e++
  :: else -> break
  od;
  e = 0;
  assert(no_resurrection || ORD(reg[0]) >= tombmax[0])
}

/* One message in flight to the host: delivered (consumed), delivered with a copy left in
 * flight (a duplicate to come), or lost. */
#define RECEIVE(E) \
  :: d_step { ((net & BIT(E)) && tail_n < TAIL) -> net = net & ~BIT(E); submit(E) } \
  :: d_step { ((net & BIT(E)) && tail_n < TAIL && SEQ(E) > cursor[SRC(E)] && DUP_OK) -> \
              DUP_TAKE; submit(E) } \
  :: d_step { ((net & BIT(E)) && LOSS_OK) -> LOSS_TAKE; net = net & ~BIT(E) }

#define CRASH(KEPT) \
  :: d_step { (CRASH_OK && tail_n > 0 && tail_n >= KEPT) -> CRASH_TAKE; restart(KEPT) }

/* A consumer redelivers everything after the host's cursor when none of its messages is in
 * flight any more (the acknowledgement timed out).  Redelivering earlier adds nothing: it
 * is a duplicate, which the network already makes. */
#define REDELIVER(S) \
  :: d_step { (cursor[S] < SEQS && (net & SRCBITS(S)) == 0) -> \
              net = net | ABOVE(S, cursor[S]) }

#define CAUGHT_UP (tail_n == 0 && cursor[0] == SEQS && cursor[1] == SEQS)

proctype Host(byte h) {
  byte net = ALL;                 /* the bag of messages in flight to this host */
  byte reg[KEYS];                 /* View registers: the winning event, or NONE */
  byte durable;                   /* events in the durable part of the log */
  byte tail_ev[TAIL];             /* records appended but not yet durable: the event ... */
  byte tail_ck[TAIL];             /* ... and the Checkpoint cursor written with it */
  byte tail_n;
  byte cursor[SOURCES];           /* Replica.cursor(source), in memory */
  byte pcur[SOURCES];             /* the last durable Checkpoint of each source */
  byte acked;                     /* ghost: events acknowledged (submit returned) */
  byte tombmax[KEYS];             /* ghost: ORD of the greatest acknowledged tombstone */
  byte win;                       /* the specification's winner (a constant) */
  byte e, k, i, c, s, got, wins;  /* scratch, zero between steps */
  byte losses, dups, crashes;     /* faults spent, against this host's budgets */
  /* Always 0.  Each assertion reads `assert(name || condition)` so that pan's report names
   * the property that failed; models/check matches on the name.  (Locals, not globals:
   * a global read would defeat the partial-order reduction.) */
  bit convergence, catch_up_complete, acked_kept, no_resurrection;

  d_step {
    reg[0] = NONE;
    win = NONE;
    e = 0;
    do
    :: e < EVENTS -> if :: ORD(e) > ORD(win) -> win = e :: else -> skip fi; e++
    :: else -> break
    od;
    e = 0
  }

end:
  do
  RECEIVE(0)
  RECEIVE(1)
  RECEIVE(2)
  RECEIVE(3)
  :: d_step { tail_n > 0 -> commit() }
  CRASH(0)
  CRASH(1)
#if TAIL >= 2
  CRASH(2)
#endif
  REDELIVER(0)
  REDELIVER(1)
  /* caught up: every consumer at the end of its stream, the log durable.  The host may
   * stop here (or run on: later crashes and duplicates are explored too). */
  :: d_step {
       CAUGHT_UP ->
       assert(catch_up_complete || durable == ALL);
       /* convergence: this host holds the specification's winner */
       assert(convergence || reg[0] == win)
     };
     break
  od;
  /* Publishing the result is the only step that touches a global, so every step above is
   * local and the partial-order reduction interleaves hosts cheaply. */
  final[h] = reg[0]
}

init {
  byte i;
  bit convergence;                /* always 0: names the assertion below */
  atomic {
    i = 0;
    do
    :: i < HOSTS -> run Host(i); i++
    :: else -> break
    od;
    i = 0
  };
  /* every host stopped: all hold the same registers */
  _nr_pr == 1;
  do
  :: i < HOSTS -> assert(convergence || final[i] == final[0]); i++
  :: else -> break
  od
}

#ifdef LIVENESS
/* Under fair delivery (finitely many losses, duplicates and crashes per host: the budgets)
 * and weak fairness between processes, every host eventually catches up and stops. */
#if HOSTS == 1
ltl converge { <> (final[0] != NONE) }
#else
ltl converge { <> (final[0] != NONE && final[1] != NONE) }
#endif
#endif
