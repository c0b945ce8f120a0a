"""What both SDK scripts use: a check that raises, and a count of them."""

passed = 0


def check(name, cond, detail=""):
    global passed
    if not cond:
        raise AssertionError(f"{name}: {detail}")
    passed += 1
    print(f"ok: {name}")


def raises(name, exc_type, fn):
    """Calls `fn`; it must raise `exc_type`, which is returned."""
    try:
        fn()
    except exc_type as e:
        check(name, True)
        return e
    except Exception as e:  # noqa: BLE001 - the wrong type is the failure
        raise AssertionError(f"{name}: raised {type(e).__name__}: {e}") from e
    raise AssertionError(f"{name}: no exception")


def summary():
    """The plain closing line tests/sdk.rs reads."""
    print(f"{passed} passed, 0 failed")
