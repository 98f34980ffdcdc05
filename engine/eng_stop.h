/*
 * eng_stop.h - stop-string matching over incremental detokenized text.
 *
 * The engine feeds each new text delta; the matcher returns the text that is safe
 * to emit now.  Text that could still turn into a stop string (the longest suffix
 * of everything seen that is a proper prefix of some stop string) is held back
 * until the next delta decides it.  When a stop string appears (possibly spanning
 * several deltas) the output ends just before it, or just after it when
 * include_stop_str_in_output; anything after it is dropped.  The stop string that
 * completes first wins (ties: the longer, then the one listed first), so the
 * result does not depend on how the text was cut into deltas.  Byte-wise: a stop string is matched on its
 * UTF-8 bytes.
 */
#ifndef ENG_STOP_H
#define ENG_STOP_H

#include <stdbool.h>
#include <stddef.h>

#include "pd_status.h"
#include "pd_util.h"

typedef struct eng_stop_matcher eng_stop_matcher_t;

/* Copies the stop strings (empty strings are ignored). */
pd_status_t eng_stop_matcher_create(const char *const *stops, int n_stops, bool include_stop,
                                    eng_stop_matcher_t **m_p);
void eng_stop_matcher_destroy(eng_stop_matcher_t *m);

/* Feed a delta; appends emit-able text to out.  *matched_p gets the index of the
 * stop string that matched (then the stream is over: further feeds emit nothing)
 * or -1.  PD_ERR_NOMEM only. */
pd_status_t eng_stop_matcher_feed(eng_stop_matcher_t *m, const char *delta, size_t len,
                                  pd_buf_t *out, int *matched_p);
/* The stream ended without a match: append the held-back text to out. */
pd_status_t eng_stop_matcher_flush(eng_stop_matcher_t *m, pd_buf_t *out);
/* Bytes currently held back. */
size_t eng_stop_matcher_held(const eng_stop_matcher_t *m);

#endif /* ENG_STOP_H */
