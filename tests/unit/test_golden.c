/*
 * test_golden.c - the engine's forward against Hugging Face transformers on the same
 * weights (goldens made by tests/golden/make_goldens.py and committed).
 *
 * For every golden file: load the model with weights dequantized to float32 and exact
 * matmuls, run each prompt through the paged forward in one batch with logits at every
 * position, and require the top-32 and the 32 probe logits within 1e-3 relative error
 * (|a - b| <= 1e-3 * max(1, |b|)) and the same argmax; then decode greedily 64 tokens
 * through the KV cache one step at a time and require the same ids (golden_common.h).
 * Exits 77 (skipped) when the default model is not in the cache.
 */
#include "golden_common.h"

static golden_cfg_t cpu_cfg;
static char gguf_buf[4096];
static const char *gguf_path;

PD_TEST(test_default_model_vs_transformers)
{
    char g[4096];
    golden_default_file(g, sizeof(g));
    golden_run(g, gguf_path, &cpu_cfg);
}

PD_TEST(test_small_models_vs_transformers) { golden_run_small_models(&cpu_cfg); }

int main(void)
{
    cpu_cfg.ops = eng_backend_cpu_ops();
    cpu_cfg.bo = (eng_backend_opts_t){.n_threads = 2, .mm_mode = KCPU_MM_EXACT};
    cpu_cfg.tol = 1e-3;
    cpu_cfg.argmax_margin_rel = false;
    cpu_cfg.greedy_need = 1 << 30;
    gguf_path = test_default_gguf(gguf_buf, sizeof(gguf_buf));
    PD_RUN(test_small_models_vs_transformers);
    if (gguf_path == NULL) {
        printf("SKIP: the default model is not in the cache (run scripts/setup.sh)\n");
        return pd_test_failed_g ? 1 : 77;
    }
    PD_RUN(test_default_model_vs_transformers);
    return PD_TEST_REPORT();
}
