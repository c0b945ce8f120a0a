"""LiteLLM's own admin client, its `litellm-proxy` CLI, against tollgate's
admin API: each command must succeed and say what the gateway did.

Usage: litellm_cli.py BASE_URL MASTER_KEY
"""

import json
import os
import subprocess
import sys
import urllib.request

from checks import check, summary

base, master = sys.argv[1], sys.argv[2]
cli = os.path.join(os.path.dirname(sys.executable), "litellm-proxy")
env = dict(os.environ, LITELLM_PROXY_URL=base, LITELLM_PROXY_API_KEY=master, NO_COLOR="1", COLUMNS="200")


def run(*args):
    out = subprocess.run([cli, *args], env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"litellm-proxy {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


# keys generate: the answer is the new key's JSON.
made = json.loads(run("keys", "generate", "--models", "gpt-4o-mini", "--key-alias", "cli-key", "--user-id", "alice"))
check("keys generate: a key", made["key"].startswith("tg-"), made)
check("keys generate: its alias", made["key_alias"] == "cli-key", made)
check("keys generate: its models", made["models"] == ["gpt-4o-mini"], made)
run("keys", "generate", "--models", "gpt-4o-mini", "--key-alias", "other-key")

# keys list: a table naming both aliases and the user.
listed = run("keys", "list")
check("keys list: the new key", "cli-key" in listed and "alice" in listed, listed)
check("keys list: the other key", "other-key" in listed, listed)

# keys delete by alias, then the list no longer names it.
deleted = run("keys", "delete", "--key-aliases", "other-key")
check("keys delete: one key deleted", "deleted_keys" in deleted, deleted)
listed = run("keys", "list")
check("keys delete: gone from the list", "other-key" not in listed and "cli-key" in listed, listed)

# keys delete by key.
deleted = run("keys", "delete", "--keys", made["key"])
check("keys delete by key", made["key_id"] in deleted, deleted)

# teams list: none yet, then the team made through the API.
check("teams list: empty", "No teams" in run("teams", "list"))


def post(path, body):
    req = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {master}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as res:
        return json.loads(res.read())


# Raw requests as LiteLLM's docs show them.
team = post("/team/new", {"team_alias": "my-new-team", "max_budget": 10, "budget_duration": "monthly"})
check("team/new as documented", team["team_alias"] == "my-new-team", team)
key = post("/key/generate", {"models": ["gpt-4o-mini"], "metadata": {"user": "ishaan@berri.ai"}, "team_id": team["team_id"]})
check("key/generate as documented", key["metadata"] == {"user": "ishaan@berri.ai"}, key)
updated = post("/key/update", {"key": key["key"], "max_budget": 5.5, "rpm_limit": 10})
check("key/update as documented", updated["max_budget"] == 5.5 and updated["rpm_limit"] == 10, updated)
teams = run("teams", "list")
check("teams list: the team", "my-new-team" in teams, teams)

# version: the server names itself.
version = run("version")
check("version: the server's", "tollgate" in version, version)

summary()
