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

# models list (GET /models with the master key) and models info
# (GET /v1/model/info): the groups the gateway serves, by name.
models = run("models", "list")
check("models list: the group", "gpt-4o-mini" in models, models)
info = json.loads(run("models", "info", "--format", "json"))
check("models info: the group and its deployment", any(m["model_name"] == "gpt-4o-mini" for m in info), info)
check("models info: no upstream URL", "http" not in json.dumps(info), info)


def http(method, uri, body=None):
    """LiteLLM's CLI's own `http request`, for the key routes its `keys` group lacks."""
    args = ["http", "request", method, uri]
    if body is not None:
        args += ["--json", json.dumps(body)]
    return json.loads(run(*args))


# A key with a budget in LiteLLM's duration syntax, then info, update,
# block, unblock, regenerate: each answer names what the gateway did.
made = json.loads(run("keys", "generate", "--models", "gpt-4o-mini", "--key-alias", "budgeted", "--duration", "30d"))
kid = made["token"]
check("keys generate --duration: expires", made["expires"] is not None, made)
shown = http("GET", f"/key/info?key={kid}")
check("key/info: the key", shown["key"] == kid and shown["info"]["key_alias"] == "budgeted", shown)
updated = http("POST", "/key/update", {"key": kid, "max_budget": 2.5, "budget_duration": "2h", "rpm_limit": 7})
check("key/update: a 2h window", updated["budget_duration"] == "2h" and updated["budget_reset_at"], updated)
check("key/update: the limits", updated["rpm_limit"] == 7 and updated["max_budget"] == 2.5, updated)
blocked = http("POST", "/key/block", {"key": kid})
check("key/block", blocked["blocked"] is True, blocked)
unblocked = http("POST", "/key/unblock", {"key": kid})
check("key/unblock", unblocked["blocked"] is False, unblocked)
regenerated = http("POST", "/key/regenerate", {"key": kid})
check("key/regenerate: a new key, the same id", regenerated["key"] != made["key"] and regenerated["token"] == kid, regenerated)
check("key/regenerate: settings kept", regenerated["rpm_limit"] == 7, regenerated)
listed = run("keys", "list")
check("keys list: the budgeted key", "budgeted" in listed, listed)

# LiteLLM's docs: a key with a 30-day budget (a calendar month, as LiteLLM
# resets it on the 1st), and the spend endpoints.
doc_key = post("/key/generate", {"models": ["gpt-4o-mini"], "max_budget": 10, "budget_duration": "30d"})
check("key/generate budget_duration 30d", doc_key["budget_duration"] == "monthly" and doc_key["budget_reset_at"], doc_key)
spend = http("GET", "/global/spend")
check("global/spend", spend["spend"] == 0, spend)
logs = http("GET", f"/spend/logs?api_key={doc_key['token']}&start_date=2024-01-01")
check("spend/logs with LiteLLM's parameters", logs["data"] == [], logs)

# users: create (LiteLLM's default makes the user a key), list, get, delete.
check("users list: none yet", "No users found" in run("users", "list"))
made_user = json.loads(run("users", "create", "--email", "ann@example.com", "--alias", "ann", "--max-budget", "5"))
check("users create: the user", made_user["user_email"] == "ann@example.com" and made_user["user_alias"] == "ann", made_user)
check("users create: its budget", made_user["max_budget"] == 5, made_user)
check("users create: its key", made_user["key"].startswith("tg-"), made_user)
uid = made_user["user_id"]
listed = run("users", "list")
check("users list: the user", uid in listed and "ann@example.com" in listed and "internal_user" in listed, listed)
got = json.loads(run("users", "get", "--id", uid))
check("users get: the user", got["user_id"] == uid and got["user_info"]["max_budget"] == 5, got)
check("users get: its key", [k["token"] for k in got["keys"]] == [made_user["key_id"]], got)
deleted = json.loads(run("users", "delete", uid))
check("users delete: the user", deleted["deleted_users"] == [uid], deleted)
check("users delete: its key, as LiteLLM deletes it", deleted["deleted_keys"] == [made_user["key_id"]], deleted)
check("users list: empty again", "No users found" in run("users", "list"))

# Customers (end users) as LiteLLM's docs create them (`max_budget` as a
# string), then their info and a block.
customer = post("/customer/new", {"user_id": "my-customer-id", "max_budget": "0"})
check("customer/new as documented", customer["user_id"] == "my-customer-id" and customer["max_budget"] == 0, customer)
info = http("GET", "/customer/info?end_user_id=my-customer-id")
check("customer/info as documented", info["user_id"] == "my-customer-id" and info["blocked"] is False, info)
blocked = post("/customer/block", {"user_ids": ["my-customer-id"]})
check("customer/block", blocked["blocked_users"][0]["blocked"] is True, blocked)

# Teams. litellm-proxy 1.110.2's `teams` group lists teams (`list`,
# `available`, `assign-key`: no create, delete or members), so a team's life
# goes through LiteLLM's documented raw requests, sent with the CLI's own
# `http request`; each answer names what the gateway did.
made_team = post("/team/new", {"team_alias": "cli-team", "members_with_roles": [{"role": "admin", "user_id": "alice"}]})
tid = made_team["team_id"]
check("team/new with members_with_roles", made_team["members_with_roles"][0]["user_id"] == "alice", made_team)
team_key = post("/key/generate", {"team_id": tid, "models": ["gpt-4o-mini"], "key_alias": "cli-team-key"})
added = http("POST", "/team/member_add", {"team_id": tid, "member": {"role": "user", "user_id": "krrish247652@berri.ai"}})
check("team/member_add as documented", added["added_members"][0]["user_id"] == "krrish247652@berri.ai", added)
added = http("POST", "/team/member_add", {"team_id": tid, "member": [{"role": "user", "user_email": "bob@example.com"}], "max_budget_in_team": None})
check("team/member_add: a list, by email", len(added["members_with_roles"]) == 3, added)
info = http("GET", f"/team/info?team_id={tid}")
check("team/info: members_with_roles", [m["role"] for m in info["team_info"]["members_with_roles"]] == ["admin", "user", "user"], info)
updated = http("POST", "/team/member_update", {"team_id": tid, "user_email": "bob@example.com", "role": "admin"})
check("team/member_update: the role", updated["user_email"] == "bob@example.com" and updated["role"] == "admin", updated)
removed = http("POST", "/team/member_delete", {"team_id": tid, "user_id": "krrish247652@berri.ai"})
check("team/member_delete as documented", removed["removed_member"]["user_id"] == "krrish247652@berri.ai", removed)
check("team/member_delete: gone from the team", len(removed["members_with_roles"]) == 2, removed)
teams = run("teams", "list")
check("teams list: the new team", "cli-team" in teams, teams)
deleted = http("POST", "/team/delete", {"team_ids": [tid]})
check("team/delete as documented: the team", deleted["deleted_teams"] == [tid], deleted)
check("team/delete: its key with it", deleted["deleted_keys"] == [team_key["key_id"]], deleted)
teams = run("teams", "list")
check("teams list: the deleted team is gone", "cli-team" not in teams and "my-new-team" in teams, teams)
listed = run("keys", "list")
check("keys list: the team's key is gone", "cli-team-key" not in listed, listed)

# version: the server names itself.
version = run("version")
check("version: the server's", "tollgate" in version, version)

summary()
