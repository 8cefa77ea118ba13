"""Publish an Omni checkpoint or a LoRA adapter folder on the Hugging Face Hub, after checking it.

    python train/push_to_hub.py --model out/nova/merged --repo-id your-name/omni-nova --dataset data/voice_clips
    python train/push_to_hub.py --model out/qwen3-omni-lora --repo-id your-name/qwen3-omni-lora   # an adapter

Checks the repo id (owner/name), that the folder holds every code file its auto_map needs, and that it reloads and
generates in a clean Python that cannot import qwen_omni; writes README.md from model_card.md (with the model-index
of eval_results.json when there is one) and only then uploads. --dry-run stops before the upload.
"""

import argparse

from qwen_omni.common.hub import push_to_hub


def main(argv=None) -> str | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Model or adapter folder.")
    parser.add_argument("--repo-id", "--repo_id", dest="repo_id", required=True, help="owner/name on the Hub.")
    parser.add_argument("--dataset", action="append", default=[], help="Training dataset (repeatable).")
    parser.add_argument("--base-model", "--base_model", dest="base_model", help="Checkpoint it was fine-tuned from.")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument(
        "--eval-results", "--eval_results", dest="eval_results", help="train/evaluate.py's eval_results.json."
    )
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", help="Hub token (default: the logged-in one).")
    parser.add_argument(
        "--dry-run",
        "--dry_run",
        dest="dry_run",
        action="store_true",
        help="Check and write README.md, upload nothing.",
    )
    args = parser.parse_args(argv)
    url = push_to_hub(
        args.model,
        args.repo_id,
        private=args.private,
        token=args.token,
        base_model=args.base_model,
        datasets=args.dataset,
        license=args.license,
        eval_results=args.eval_results,
        dry_run=args.dry_run,
    )
    print(url or f"dry run: {args.model} checked and README.md written; nothing uploaded")
    return url


if __name__ == "__main__":
    main()
