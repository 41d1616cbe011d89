/*
 * The replication protocol of imds-replica, for spin.  See models/README.md for what each
 * variable and process stands for in the code, the bounds, and how models/check runs it.
 *
 * Sources own a stream of versioned events (writes and tombstones).  Every host has a
 * durable consumer per source: the stream delivers over a network that loses, reorders
 * and duplicates; the host validates, appends to its log (group commit: a tail of at most
 * TAIL appended-but-not-yet-durable records), applies the LWW merge to its view, and
 * acknowledges an event once it is durable.  A host may crash at any time: it keeps the
 * durable log plus any prefix of the tail (a torn write), replays that into a fresh view
 * and resumes every consumer from the persisted checkpoint.  Consumers redeliver
 * everything after a host's cursor (the catch-up).
 *
 * Knobs (cpp, set by models/check or the control files that #include this one):
 *   HOSTS                      number of host replicas (2 or 3)
 *   LOSS_MAX DUP_MAX CRASH_MAX fault budgets; an undefined budget is unbounded
 *   LIVENESS                   add the LTL claim `converge` (needs finite budgets)
 *   ARRIVAL_TIE NO_SOURCE_TIE ACK_BEFORE_DURABLE CURSOR_PAST_GAP   negative controls
 */

#ifndef HOSTS
#define HOSTS 2
#endif
#define SOURCES 2
#define SEQS 2                    /* events per source */
#define EVENTS 4                  /* SOURCES * SEQS; event e is seq SEQ(e) of source SRC(e) */
#define KEYS 1
#define TAIL 2                    /* group-commit window: records appended, not yet durable */
#define NONE 255                  /* an empty register */
#define TOMB 3                    /* the digest of the tombstone marker (a fixed value) */
#define ALL 15                    /* bitmask of every event */

#define SRC(e) ((e) / SEQS)
#define SEQ(e) ((e) % SEQS + 1)
#define BIT(e) (1 << (e))
#define SRCBITS(s) (((1 << SEQS) - 1) << ((s) * SEQS))
/* bits of source s's events with seq > c: what a redelivery from cursor c sends */
#define ABOVE(s, c) (SRCBITS(s) & ~(((1 << (c)) - 1) << ((s) * SEQS)))

/* The scenario: one register written and deleted by two sources whose versions collide.
 *   e0  fabric seq 1  v1  value (digest 1)
 *   e1  fabric seq 2  v2  tombstone
 *   e2  tags   seq 1  v1  value (digest 2)   ties e0 on version: source breaks it
 *   e3  tags   seq 2  v2  tombstone          ties e1 on version AND digest: only source breaks it
 * Late older writes (e0, e2 after e1, e3) must not resurrect; the winner everywhere is e3. */
#define VER(e) ((e) % SEQS + 1)
#define KEY(e) 0
#define DEL(e) ((e) % SEQS == 1)
#define DIG(e) (DEL(e) -> TOMB : ((e) == 0 -> 1 : 2))

/* The specification's total order (version, source, digest) as one number; 0 = no event.
 * Used only by the assertions; the hosts use `supersedes` below, which the controls break. */
#define ORD(e) ((e) == NONE -> 0 : 1 + VER(e) * 16 + SRC(e) * 4 + DIG(e))

/* ---- state -------------------------------------------------------------------------- */
byte net[HOSTS];                  /* messages in flight to host h: a bag (bit per event) */
byte reg[HOSTS * KEYS];           /* View registers: the winning event id, or NONE */
byte durable[HOSTS];              /* events in the durable part of host h's log */
byte tail_ev[HOSTS * TAIL];       /* log records appended but not durable: event ... */
byte tail_ck[HOSTS * TAIL];       /* ... and the Checkpoint(source, cursor) written with it */
byte tail_n[HOSTS];
byte cursor[HOSTS * SOURCES];     /* Replica.cursor(source): in memory */
byte pcur[HOSTS * SOURCES];       /* the last durable Checkpoint per source */
/* ghosts: not part of the protocol, only of its assertions */
byte acked[HOSTS];                /* events host h acknowledged (submit returned) */
byte tombmax[HOSTS * KEYS];       /* ORD of the greatest tombstone host h acknowledged */
bool settled;                     /* every host caught up, durable, and agreeing */
#ifdef LOSS_MAX
byte losses;
#endif
#ifdef DUP_MAX
byte dups;
#endif
#ifdef CRASH_MAX
byte crashes;
#endif
/* scratch for atomic steps; hidden: not part of the state vector */
hidden byte e, k, i, c, s, hh, got, win, wins, caught_up;
/* Always 0: each assertion is written `assert(name || condition)` so that pan's report
 * names the property that failed (models/check matches on it). */
hidden byte convergence, catch_up_complete, acked_kept, no_resurrection;


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

/* View.apply(event) */
inline apply(h, ev) {
  k = KEY(ev);
  supersedes(ev, reg[h * KEYS + k], wins);
  if
  :: wins -> reg[h * KEYS + k] = ev
  :: else -> skip
  fi;
  wins = 0
}

/* a tombstone this host acknowledged is never overtaken by an older write */
inline check_tombstones(h) {
  k = 0;
  do
  :: k < KEYS ->
     assert(no_resurrection || ORD(reg[h * KEYS + k]) >= tombmax[h * KEYS + k]);
     k++
  :: else -> break
  od;
  k = 0
}

/* submit returned: the event is acknowledged to its source */
inline acknowledge(h, ev) {
  acked[h] = acked[h] | BIT(ev);
  if
  :: DEL(ev) && ORD(ev) > tombmax[h * KEYS + KEY(ev)] -> tombmax[h * KEYS + KEY(ev)] = ORD(ev)
  :: else -> skip
  fi
}

/* every event host h has logged, durable or not */
inline logged(h, out) {
  out = durable[h];
  i = 0;
  do
  :: i < tail_n[h] -> out = out | BIT(tail_ev[h * TAIL + i]); i++
  :: else -> break
  od;
  i = 0
}

/* the checker: once every host has caught up and is durable, all hold the same registers */
inline check_settled() {
  caught_up = true;
  hh = 0;
  do
  :: hh < HOSTS ->
     caught_up = (caught_up && tail_n[hh] == 0 && cursor[hh * SOURCES] == SEQS
                  && cursor[hh * SOURCES + 1] == SEQS);
     hh++
  :: else -> break
  od;
  settled = false;
  if
  :: caught_up ->
     hh = 0;
     do
     :: hh < HOSTS ->
        /* catch-up complete: every host logged every event */
        assert(catch_up_complete || durable[hh] == ALL);
        k = 0;
        do
        :: k < KEYS ->
           /* convergence: every host holds the specification's winner */
           assert(convergence || reg[hh * KEYS + k] == win);
           k++
        :: else -> break
        od;
        hh++
     :: else -> break
     od;
     settled = true
  :: else -> skip
  fi;
  hh = 0; k = 0; caught_up = false
}

/* after a restart (and at the end): every acknowledged event is still in force */
inline check_acked(h) {
  e = 0;
  do
  :: e < EVENTS ->
     assert(acked_kept || !(acked[h] & BIT(e)) || ORD(reg[h * KEYS + KEY(e)]) >= ORD(e));
     e++
  :: else -> break
  od;
  e = 0
}

/* A consumer receiving one message: Replica.submit([event], checkpoint=Checkpoint(src, cursor)) */
inline deliver(h, ev) {
  s = SRC(ev);
  if
  :: SEQ(ev) <= cursor[h * SOURCES + s] -> skip   /* dedupe: the cursor already covers it */
  :: else ->
     apply(h, ev);
     check_tombstones(h);
     logged(h, got);
     got = got | BIT(ev);
#ifdef CURSOR_PAST_GAP
     /* control: the cursor jumps to the newest seq seen, over a gap */
     if
     :: SEQ(ev) > cursor[h * SOURCES + s] -> cursor[h * SOURCES + s] = SEQ(ev)
     :: else -> skip
     fi;
#else
     /* the cursor is the end of the contiguous prefix of seqs logged */
     do
     :: (cursor[h * SOURCES + s] < SEQS
         && (got & BIT(s * SEQS + cursor[h * SOURCES + s]))) ->
        cursor[h * SOURCES + s]++
     :: else -> break
     od;
#endif
     tail_ev[h * TAIL + tail_n[h]] = ev;
     tail_ck[h * TAIL + tail_n[h]] = cursor[h * SOURCES + s];
     tail_n[h]++;
#ifdef ACK_BEFORE_DURABLE
     acknowledge(h, ev);   /* control: submit returns before the record is durable */
#endif
     got = 0
  fi;
  s = 0
}

/* make tail record j durable: the record and its Checkpoint */
inline persist(h, j) {
  durable[h] = durable[h] | BIT(tail_ev[h * TAIL + j]);
  pcur[h * SOURCES + SRC(tail_ev[h * TAIL + j])] = tail_ck[h * TAIL + j]
}

inline clear_tail(h) {
  i = 0;
  do
  :: i < TAIL -> tail_ev[h * TAIL + i] = 0; tail_ck[h * TAIL + i] = 0; i++
  :: else -> break
  od;
  tail_n[h] = 0;
  i = 0
}

proctype Host(byte h) {
end:
  do
  /* the network hands the host one message in flight, in any order */
  :: atomic {
       net[h] != 0 && tail_n[h] < TAIL ->
       if
       :: net[h] & 1 -> e = 0
       :: net[h] & 2 -> e = 1
       :: net[h] & 4 -> e = 2
       :: net[h] & 8 -> e = 3
       fi;
       if
       :: net[h] = net[h] & ~BIT(e); deliver(h, e)
#ifdef DUP_MAX
       :: dups < DUP_MAX -> dups++; deliver(h, e)       /* a copy stays in flight */
#else
       :: deliver(h, e)
#endif
#ifdef LOSS_MAX
       :: losses < LOSS_MAX -> losses++; net[h] = net[h] & ~BIT(e)
#else
       :: net[h] = net[h] & ~BIT(e)                      /* lost */
#endif
       fi;
       e = 0;
       check_settled()
     }
  /* group commit: the tail becomes durable, then its events are acknowledged */
  :: atomic {
       tail_n[h] > 0 ->
       c = 0;
       do
       :: c < tail_n[h] ->
          persist(h, c);
#ifndef ACK_BEFORE_DURABLE
          acknowledge(h, tail_ev[h * TAIL + c]);
#endif
          c++
       :: else -> break
       od;
       c = 0;
       clear_tail(h);
       check_settled()
     }
  /* crash: keep the durable log and a prefix of the tail; replay; resume from checkpoints */
  :: atomic {
#ifdef CRASH_MAX
       crashes < CRASH_MAX -> crashes++;
#else
       true ->
#endif
       c = 0;
       do
       :: c < tail_n[h] -> persist(h, c); c++   /* this record made it to disk */
       :: break
       od;
       c = 0;
       clear_tail(h);
       reg[h * KEYS] = NONE;
       e = 0;
       do
       :: e < EVENTS ->
          if
          :: durable[h] & BIT(e) -> apply(h, e)
          :: else -> skip
          fi;
          e++
       :: else -> break
       od;
       e = 0;
       cursor[h * SOURCES] = pcur[h * SOURCES];
       cursor[h * SOURCES + 1] = pcur[h * SOURCES + 1];
       check_tombstones(h);
       check_acked(h);
       check_settled()
     }
  od
}

/* The stream's durable consumer of source s for host h: redelivers everything after the
 * host's cursor whenever some of it is not in flight (an ack timed out). */
proctype Consumer(byte src; byte h) {
end:
  do
  :: atomic {
       (cursor[h * SOURCES + src] < SEQS
        && (net[h] & ABOVE(src, cursor[h * SOURCES + src]))
           != ABOVE(src, cursor[h * SOURCES + src])) ->
       net[h] = net[h] | ABOVE(src, cursor[h * SOURCES + src])
     }
  od
}

init {
  atomic {
    /* the specification's winner: the maximum of all events in the total order */
    win = NONE;
    e = 0;
    do
    :: e < EVENTS ->
       if
       :: ORD(e) > ORD(win) -> win = e
       :: else -> skip
       fi;
       e++
    :: else -> break
    od;
    e = 0;
    hh = 0;
    do
    :: hh < HOSTS ->
       reg[hh * KEYS] = NONE;
       net[hh] = ALL;                 /* every source published every event */
       run Host(hh);
       run Consumer(0, hh);
       run Consumer(1, hh);
       hh++
    :: else -> break
    od;
    hh = 0
  }
}

#ifdef LIVENESS
/* Under fair delivery (finitely many losses, duplicates and crashes: the budgets) and weak
 * fairness between processes, the fleet eventually settles and stays settled. */
ltl converge { <> [] settled }
#endif
