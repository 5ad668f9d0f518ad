"""The store: every SQL statement of the gateway, behind one package. `engine` runs transactions on
the database thread with group commit; `money` and `accounts` are the transactions themselves."""

from billing.store.engine import (  # noqa: F401
    SCHEMA_VERSION, PAGE_SIZE, WAL_CHECKPOINT_PAGES, SCHEMA, StoreClosed, Store, connect, migrate,
)
from billing.store.money import (  # noqa: F401
    MAX_BALANCE, Admission, HoldRequest, tx_admit, tx_admit_all, tx_check_key, Settlement, Settled, tx_settle,
    tx_key_scope, tx_key_balance,
    tx_settle_all, tx_stale_holds, tx_credit,
    tx_bootstrap_demo, tx_create_account, tx_credit_deposit,
)
from billing.store.accounts import (  # noqa: F401
    tx_account, tx_find_account, tx_list_accounts, KEY_COLUMNS, tx_create_key, tx_key, tx_list_keys,
    tx_rotate_key, SETTABLE_KEY_FIELDS, tx_set_key, tx_history, tx_ledger_totals, tx_open_holds, tx_usage, tx_request_usage,
    tx_usage_log, tx_daily_spend, tx_month_spend_by_key,
    tx_take_lease, tx_drop_lease, tx_setting,
)
from billing.store.cache import (  # noqa: F401
    CacheEntry, CachedAnswer, tx_cache_get, tx_cache_put, tx_cache_stats,
)
from billing.store.ops import HOLD_KINDS, tx_oldest_open_hold, tx_add_upstream_health, tx_upstream_health  # noqa: F401
from billing.store.recharge import (  # noqa: F401
    SeenTransfer, tx_deposit_address, tx_watched_addresses, tx_record_transfers, tx_deposits_to_confirm,
    tx_drop_deposit, tx_cursor, tx_advance_cursor, tx_rewind_cursor, tx_deposits, tx_deposit_counts, NewOrder,
    tx_create_order, tx_orders, tx_all_orders, confirmations,
)
from billing.store.users import (  # noqa: F401
    tx_create_user, tx_user, tx_login_user, tx_find_user, tx_list_users, tx_set_password, tx_set_role,
    tx_create_session, tx_session_user, tx_drop_session, tx_take_attempt, tx_give_back_attempt,
    tx_marked_since, KNOWN_PREFIX,
)
