"""One credential per service, each allowed only its job (`acme setup-acl`, ADR 0020).

- `redis_users`: the Redis ACL users, each one's key patterns, direct commands and Lua scripts
  (the commands of those scripts read from lua/ itself);
- `pg_roles`: the PostgreSQL login roles and their grants, applied by the owner role;
- `command`: `acme setup-acl`, passwords from the environment or files, what it did printed,
  never a secret.
"""
