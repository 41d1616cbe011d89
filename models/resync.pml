/*
 * A stream resync's tombstones against writes published around it, for spin.
 * models/README.md maps every variable and step here to the code and states the bounds.
 *
 * Two hosts hold the same registers of one source (a parent key P and its child C, each
 * absent, a value or a tombstone, at version 5) when the stream is deleted and recreated
 * empty. A compare-and-set publisher then publishes up to NPUB events (either key, version
 * 6 = held + 1 or 7, a value whose digest orders below or above the old tombstone marker's,
 * or a tombstone); the stream keeps one message per key, its winner. Each host, at any
 * moment, notices the recreation and resyncs: it reads the stream's messages in sequence
 * order, one step at a time (publishes interleave), notes the keys it saw, and once
 * nothing is left after its cursor tombstones every live register it holds that it did not
 * see, at its version + 1 with seq RESYNC; then it follows (reads what is published
 * later). A host may restart once during its resync, which starts the resync over.
 * When the publisher is done and both hosts have caught up, each host's documents must be
 * those of a host that never held anything (the stream's own registers), and the two
 * hosts' registers must be identical, delivery seq included.
 *
 * Knobs (cpp -D, set by the files that #include this one; each breaks one rule):
 *   MARKER_TIE      a tombstone's digest is that of a fixed marker (2: between the two
 *                   values' digests): the rule until session 5
 *   CHILD_EXCEPTION a child's tombstone removes its path under a parent value of its
 *                   version (whatever the order says)
 *   NO_RESYNC_SEQ   the resync's tombstones carry no seq (which ranks before any)
 */

#define KEYS 2
#define P 0
#define C 1
#define NPUB 2
#define LOW 1             /* a value digest below the old marker's ("v") */
#define HIGH 3            /* a value digest above it ("w") */
#ifdef MARKER_TIE
#define TD 2              /* the old rule: blake2b of the marker byte 0xc1 */
#else
#define TD 0              /* _event.TOMBSTONE_DIGEST: empty, below every value */
#endif
#ifdef NO_RESYNC_SEQ
#define RESYNC 0          /* no seq: ranks before any */
#else
#define RESYNC 255        /* _cursor.RESYNC_SEQ: above every stream sequence */
#endif

/* the order key (version, digest) of one source as one number; 0 for no register */
#define ORD(v, d) ((v) == 0 -> 0 : (v) * 4 + (d))

/* registers: host h's key k is [h * KEYS + k]; version 0 = no register */
byte hver[2 * KEYS]; byte hdig[2 * KEYS]; bool hdel[2 * KEYS]; byte hsq[2 * KEYS];
/* the stream: one message per key, its sequence (0: none) */
byte sver[KEYS]; byte sdig[KEYS]; bool sdel[KEYS]; byte sseq[KEYS];
byte last = 0;            /* the stream's last sequence */
byte published = 0;
bool pubdone = false;
/* per host: 0 = holds the old registers, not yet resyncing; 1 = resyncing; 2 = following */
byte phase[2]; byte cursor[2]; byte seen[2]; byte restarts[2];

/* Assertions name their property first: models/check reads the name. */
bool same_documents = 0;  /* every host's documents are the stream's */
bool same_registers = 0;  /* the two hosts' registers are identical, seq included */

byte k, i, n, v, d, best;   /* scratch (not hidden: the initial choices span steps) */
bool del, wins;
byte dp0, dc0, dp1, dc1;

/* View.apply_batch on host h, key k: the greater order key wins; equal: the smaller seq */
inline apply(h, k, v, d, del, s) {
  i = h * KEYS + k;
  wins = (hver[i] == 0 || ORD(v, d) > ORD(hver[i], hdig[i])
          || (ORD(v, d) == ORD(hver[i], hdig[i]) && s < hsq[i]));
  if
  :: wins -> hver[i] = v; hdig[i] = d; hdel[i] = del; hsq[i] = s
  :: else -> skip
  fi
}

/* View.document over registers (ver, dig, del) of P (index ip) and C (index ic): (the
 * value at P's own path, the value at C's path). Every value of P has a field at C's path
 * (100 + its digest). C takes part unless P is greater in the order. */
#ifdef CHILD_EXCEPTION
#define EXCEPT(V, G, D, ip, ic) (D[ic] && !D[ip] && V[ip] == V[ic])
#else
#define EXCEPT(V, G, D, ip, ic) false
#endif
#define TAKES_PART(V, G, D, ip, ic) (V[ic] != 0 && (V[ip] == 0 \
    || ORD(V[ip], G[ip]) <= ORD(V[ic], G[ic]) || EXCEPT(V, G, D, ip, ic)))
#define DOC_P(V, G, D, ip) ((V[ip] != 0 && !D[ip]) -> G[ip] : 0)
#define DOC_C(V, G, D, ip, ic) (TAKES_PART(V, G, D, ip, ic) -> (D[ic] -> 0 : G[ic]) \
    : ((V[ip] != 0 && !D[ip]) -> 100 + G[ip] : 0))

/* a host's next step; h is a constant */
inline host_step(h) {
  if
  :: phase[h] == 0 -> phase[h] = 1; cursor[h] = 0; seen[h] = 0   /* sees the new identity */
  :: phase[h] != 0 ->
     /* the message after the cursor with the least sequence, if any */
     best = 255; n = 255;
     k = 0;
     do
     :: k < KEYS ->
        if
        :: sseq[k] > cursor[h] && sseq[k] < best -> best = sseq[k]; n = k
        :: else -> skip
        fi;
        k++
     :: else -> break
     od;
     if
     :: n != 255 ->
        apply(h, n, sver[n], sdig[n], sdel[n], sseq[n]);
        cursor[h] = best;
        if
        :: phase[h] == 1 -> seen[h] = seen[h] | (1 << n)
        :: else -> skip
        fi
     :: n == 255 && phase[h] == 1 ->
        /* caught up: the resync ends; tombstone what did not reappear */
        k = 0;
        do
        :: k < KEYS ->
           i = h * KEYS + k;
           if
           :: hver[i] != 0 && !hdel[i] && !(seen[h] & (1 << k)) ->
              v = hver[i] + 1;
              apply(h, k, v, TD, true, RESYNC)
           :: else -> skip
           fi;
           k++
        :: else -> break
        od;
        phase[h] = 2
     :: else -> skip   /* following, caught up: idle */
     fi
  fi
}

active proctype Fleet() {
  /* what both hosts hold before the recreation: each key absent, a value or a
   * tombstone at version 5 (from the old stream: seqs 1 and 2) */
  k = 0;
  do
  :: k < KEYS ->
     if
     :: v = 0; d = 0; del = false
     :: v = 5; d = LOW; del = false
     :: v = 5; d = HIGH; del = false
     :: v = 5; d = TD; del = true
     fi;
     hver[k] = v; hdig[k] = d; hdel[k] = del; hsq[k] = (v != 0 -> k + 1 : 0);
     hver[KEYS + k] = v; hdig[KEYS + k] = d; hdel[KEYS + k] = del;
     hsq[KEYS + k] = hsq[k];
     k++
  :: else -> break
  od;
  restarts[0] = 1; restarts[1] = 1;

  do
  /* the publisher: compare and set, so the stream keeps each key's winner */
  :: atomic {
       !pubdone && published < NPUB ->
       published++;
       if :: k = P :: k = C fi;
       if :: v = 6 :: v = 7 fi;
       if :: d = LOW; del = false :: d = HIGH; del = false :: d = TD; del = true fi;
       if
       :: sseq[k] == 0 || ORD(v, d) > ORD(sver[k], sdig[k]) ->
          last++; sver[k] = v; sdig[k] = d; sdel[k] = del; sseq[k] = last
       :: else -> skip   /* loses to the subject's current message: not written */
       fi
     }
  :: atomic { !pubdone -> pubdone = true }
  :: atomic { host_step(0) }
  :: atomic { host_step(1) }
  /* a restart during a resync: it starts over (the seen keys are gone) */
  :: atomic { phase[0] == 1 && restarts[0] > 0 -> restarts[0]--; cursor[0] = 0; seen[0] = 0 }
  :: atomic { phase[1] == 1 && restarts[1] > 0 -> restarts[1]--; cursor[1] = 0; seen[1] = 0 }
  /* quiet: nothing more published, both hosts following at the stream's end */
  :: atomic {
       pubdone && phase[0] == 2 && phase[1] == 2 && cursor[0] == last && cursor[1] == last ->
       dp0 = DOC_P(hver, hdig, hdel, P);
       dc0 = DOC_C(hver, hdig, hdel, P, C);
       dp1 = DOC_P(hver, hdig, hdel, KEYS + P);
       dc1 = DOC_C(hver, hdig, hdel, KEYS + P, KEYS + C);
       /* a host that never held anything holds the stream's registers */
       assert(same_documents || (dp0 == DOC_P(sver, sdig, sdel, P)
                                 && dc0 == DOC_C(sver, sdig, sdel, P, C)
                                 && dp1 == dp0 && dc1 == dc0));
       k = 0;
       do
       :: k < KEYS ->
          assert(same_registers || (hver[k] == hver[KEYS + k] && hdig[k] == hdig[KEYS + k]
                                    && hdel[k] == hdel[KEYS + k]
                                    && hsq[k] == hsq[KEYS + k]));
          k++
       :: else -> break
       od;
       break
     }
  od
}
