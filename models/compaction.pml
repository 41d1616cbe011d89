/*
 * Compaction of imds-replica's view, for spin: the ancestor document rule, per-source
 * horizons in two version spaces, and the floors that dropped tombstones leave.
 * models/README.md maps every variable and step here to the code and states the bounds.
 *
 * One replica receives a fixed set of events in any order, each at least once and some a
 * second time later (a late redelivery), and may compact at any moment with any horizon
 * the delivery-delay assumption allows: a horizon of a version space may pass an event
 * only once the replica has seen it (a replica that never saw an event older than the
 * horizon resyncs instead; the gc_grace assumption).  Its documents are compared with the
 * specification's: the same rule applied to every event once, never compacted.
 *
 * Knobs (cpp -D, set by the files that #include this one; each breaks one rule):
 *   DROP_HIDING   a tombstone is dropped even when it hides part of an older live value
 *                 or an older live register beneath it (0.1's compaction)
 *   ONE_HORIZON   one numeric horizon for every version space (0.1's tombstone horizon)
 *   NO_FLOOR      dropping a tombstone leaves no floor
 */

#define EVENTS 9
#define KEYS 6
#define NONE 255
#define TOMB 0            /* a tombstone's digest: empty, below every value's */

/* Keys: P and X are parents of C and D (shallower keys on their paths); Q and Q2 belong to
 * the counter source K alone (the stated assumption for counter-versioned data). */
#define P 0
#define C 1
#define X 2
#define D 3
#define Q 4
#define Q2 5
#define NOKEY 255
#define PARENT(k) ((k) == C -> P : ((k) == D -> X : NOKEY))

/* Sources: A and B stamp hybrid-clock versions (here 10..12), K counts (here 1..2). */
#define A 0
#define B 1
#define K 2

/* The events.
 *   e0  A writes P   v10  (its value has a field at C's path)
 *   e1  B deletes C  v11  under the older live P: hides part of P's value, must stay
 *   e2  A writes X   v10
 *   e3  B deletes X  v11  over the older live D beneath it: hides D, must stay
 *   e4  A writes D   v10
 *   e5  K writes Q   v1
 *   e6  K deletes Q  v2   droppable once K's own horizon passes it
 *   e7  K writes Q2  v1   a counter write that any hybrid-clock horizon is "past"
 *   e8  B deletes P  v12  after it P and C hide nothing: both droppable, then late copies
 *                         of e0/e1 must stay no-ops (the floor)                          */
byte KEY_[EVENTS] = { P, C, X, X, D, Q, Q, Q2, P };
byte SRC_[EVENTS] = { A, B, A, B, A, K, K, K, B };
byte VER_[EVENTS] = { 10, 11, 10, 11, 10, 1, 2, 1, 12 };
bool DEL_[EVENTS] = { 0, 1, 0, 1, 0, 0, 1, 0, 1 };
byte DIG_[EVENTS] = { 1, TOMB, 2, TOMB, 3, 4, TOMB, 5, TOMB };
#define HLC(e) (SRC_[e] != K)

/* the order key (version, source, digest) as one number; 0 for an empty register */
#define ORD(e) ((e) == NONE -> 0 : 1 + VER_[e] * 64 + SRC_[e] * 16 + DIG_[e])

byte reg[KEYS];           /* the replica's registers: View._registers */
byte spec[KEYS];          /* the specification's registers: every event once */
byte hfloor = 0;          /* floor of the hybrid-clock space (0: none) */
byte kfloor = 0;          /* floor of counter source K */
bool seen[EVENTS];        /* delivered at least once */
bool again[EVENTS];       /* the one late redelivery has happened */

/* View.document at key k over registers r[]: a register takes part only if its parent
 * register (if any) is not greater in the order; a child that does not take part shows its
 * parent's value at its path (the field, 100 + the parent's digest) if the parent is live. */
#define TAKES_PART(r, k) (r[k] != NONE && (PARENT(k) == NOKEY || r[PARENT(k)] == NONE \
                          || ORD(r[PARENT(k)]) <= ORD(r[k])))
#define PARENT_FIELD(r, k) ((PARENT(k) != NOKEY && r[PARENT(k)] != NONE \
                             && !DEL_[r[PARENT(k)]]) -> 100 + DIG_[r[PARENT(k)]] : 0)
#define DOC(r, k) (TAKES_PART(r, k) -> (DEL_[r[k]] -> 0 : DIG_[r[k]]) : PARENT_FIELD(r, k))

/* Assertions name their property first: models/check reads the name. */
bool no_unhide = 0;        /* compaction never changes a document */
bool redelivery_noop = 0;  /* a late copy of an event already seen changes no document */
bool same_documents = 0;   /* having seen everything, the documents are the spec's */

/* Scratch values of one atomic step; hidden: not part of the state (they never carry
 * anything from one step to the next). */
hidden byte before[KEYS];
hidden byte e, k, j, horizon, h, kh;
hidden byte hides, ok;

inline snapshot_docs() {
  k = 0;
  do
  :: k < KEYS -> before[k] = DOC(reg, k); k++
  :: else -> break
  od
}

inline apply(e) {
  /* View.apply_batch: a key not held, below its space's floor, is a counted no-op */
  k = KEY_[e];
  if
  :: reg[k] == NONE && HLC(e) && VER_[e] < hfloor -> skip
  :: reg[k] == NONE && !HLC(e) && VER_[e] < kfloor -> skip
  :: else ->
     if
     :: ORD(e) > ORD(reg[k]) -> reg[k] = e
     :: else -> skip
     fi
  fi
}

/* View._overrides_live: an older live parent, or an older live child, of tombstone t */
inline overrides_live(k, res) {
  res = false;
  j = 0;
  do
  :: j < KEYS ->
     /* j is k's parent or k's child, live, and older than the tombstone */
     if
     :: (PARENT(k) == j || PARENT(j) == k) && reg[j] != NONE -> 
        if
        :: (!DEL_[reg[j]]) && (ORD(reg[j]) < ORD(reg[k])) -> res = true
        :: else -> skip
        fi
     :: else -> skip
     fi;
     j++
  :: else -> break
  od
}

/* View.compact(Horizons(hlc=h, sources={"K": kh})); 0 means no horizon */
inline compact(h, kh) {
  snapshot_docs();
  k = 0;
  do
  :: k < KEYS ->
     if
     :: reg[k] != NONE && DEL_[reg[k]] ->
        e = reg[k];
#ifdef ONE_HORIZON
        horizon = h;                        /* control: one number for every space */
#else
        horizon = (HLC(e) -> h : kh);
#endif
        overrides_live(k, hides);
#ifdef DROP_HIDING
        hides = false;                      /* control: dropped whatever it hides */
#endif
        if
        :: horizon != 0 && VER_[e] < horizon && !hides ->
           reg[k] = NONE;
#ifndef NO_FLOOR
           if
           :: HLC(e) && VER_[e] + 1 > hfloor -> hfloor = VER_[e] + 1
           :: !HLC(e) && VER_[e] + 1 > kfloor -> kfloor = VER_[e] + 1
           :: else -> skip
           fi
#endif
        :: else -> skip
        fi
     :: else -> skip
     fi;
     k++
  :: else -> break
  od;
  k = 0;
  do
  :: k < KEYS -> assert(no_unhide || DOC(reg, k) == before[k]); k++
  :: else -> break
  od
}

/* may a horizon pass version v of the space hlc? only if every event below it was seen */
inline allowed(hlc, v, res) {
  res = true;
  j = 0;
  do
  :: j < EVENTS ->
     if
     :: HLC(j) == hlc && VER_[j] < v && !seen[j] -> res = false
     :: else -> skip
     fi;
     j++
  :: else -> break
  od
}

active proctype Replica() {
  /* the specification: every event once, the register keeps the maximum */
  k = 0;
  do
  :: k < KEYS -> reg[k] = NONE; spec[k] = NONE; k++
  :: else -> break
  od;
  e = 0;
  do
  :: e < EVENTS ->
     if
     :: ORD(e) > ORD(spec[KEY_[e]]) -> spec[KEY_[e]] = e
     :: else -> skip
     fi;
     e++
  :: else -> break
  od;

  do
  /* a first delivery, of any event not yet seen */
  :: atomic {
       select(e : 0 .. EVENTS - 1);
       if
       :: !seen[e] -> seen[e] = true; apply(e)
       :: else -> skip
       fi
     }
  /* a late redelivery of an event already seen: must change nothing */
  :: atomic {
       select(e : 0 .. EVENTS - 1);
       if
       :: seen[e] && !again[e] ->
          again[e] = true; snapshot_docs(); apply(e);
          k = 0;
          do
          :: k < KEYS -> assert(redelivery_noop || DOC(reg, k) == before[k]); k++
          :: else -> break
          od
       :: else -> skip
       fi
     }
  /* a compaction with horizons the delivery-delay assumption allows */
  :: atomic {
       select(h : 11 .. 13); select(kh : 0 .. 3);
       allowed(true, h, ok);
       allowed(false, kh, hides);
       if
       :: ok && hides -> compact(h, kh)
       :: else -> skip
       fi
     }
  /* everything seen at least once: compare, and stop */
  :: atomic {
       ok = true;
       e = 0;
       do
       :: e < EVENTS -> ok = ok && seen[e]; e++
       :: else -> break
       od;
       if
       :: ok ->
          k = 0;
          do
          :: k < KEYS -> assert(same_documents || DOC(reg, k) == DOC(spec, k)); k++
          :: else -> break
          od
       :: else -> skip
       fi
     };
     if
     :: ok -> break
     :: else -> skip
     fi
  od
}
