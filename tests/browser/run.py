#!/usr/bin/python3
"""The web console in a real browser (headless Chromium from Debian, driven by
python3-selenium) against `blueprint serve` and the ActiveCampaign emulator.

    /usr/bin/python3 tests/browser/run.py [-v] [NAME…]

Prints TAP ("ok N - name" / "not ok N - name"); scripts/run-tests.sh counts
it.  The scenarios share one serve, one emulator and one browser and run in
order (the integration installed by Quick Setup is used by the rest).
Screenshots of each main screen, at 1366×768 and 420 px wide, go to
build/screenshots/ (a failing scenario also leaves NAME-failure.png there).
"""

import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import WAIT, LAPTOP, NARROW, poll  # noqa: E402

try:
    from selenium.common.exceptions import (NoAlertPresentException, NoSuchElementException,
                                            StaleElementReferenceException, TimeoutException)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False

VERBOSE = '-v' in sys.argv
XSS_IMG = '<img src=x onerror=window.__xss=1;alert(1)>'
XSS_SCRIPT = '</script><script>window.__xss=2;alert(2)</script>'
EMAIL = 'quick.setup@example.com'


def log(*a):
    if VERBOSE:
        print('#', *a, flush=True)


class Console:
    """The browser, with explicit waits that say what they waited for."""

    def __init__(self, env, driver):
        self.env = env
        self.d = driver
        self.shots = []
        os.makedirs(harness.SHOTS, exist_ok=True)

    # ---- waiting ----
    def wait(self, cond, message, timeout=WAIT):
        w = WebDriverWait(self.d, timeout, poll_frequency=0.1,
                          ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
        return w.until(lambda d: cond(), message)

    def el(self, css, message=None, visible=True):
        def find():
            for e in self.d.find_elements(By.CSS_SELECTOR, css):
                if not visible or e.is_displayed():
                    return e
            return None
        return self.wait(find, message or 'no visible element matches %s' % css)

    def gone(self, css, message=None):
        return self.wait(lambda: not self.d.find_elements(By.CSS_SELECTOR, css), message or '%s is still there' % css)

    def absent(self, css):
        found = [e for e in self.d.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]
        assert not found, 'the page offers %s, it should not' % css

    def text(self, css, text, message=None):
        def check():
            for e in self.d.find_elements(By.CSS_SELECTOR, css):
                if text in e.text:
                    return e
            return None
        return self.wait(check, message or '%r never appeared in %s' % (text, css))

    def click(self, css, message=None):
        """Click the first visible, enabled match (looked up again if the page
        rebuilt it meanwhile)."""
        def go():
            e = self.el(css, message)
            if not e.is_enabled():
                return None
            self.d.execute_script('arguments[0].scrollIntoView({block:"center"})', e)
            e.click()
            return e
        return self.wait(go, message or 'could not click %s (missing or disabled)' % css)

    def type(self, css, value, clear=True):
        e = self.el(css)
        if clear:
            e.send_keys(Keys.CONTROL, 'a')
            e.send_keys(Keys.DELETE)
        e.send_keys(value)
        return e

    def js(self, script, *args):
        return self.d.execute_script(script, *args)

    def go(self, fragment):
        """Navigate inside the page (the session and any sentinel survive)."""
        self.js('location.hash = arguments[0]', fragment)
        self.wait(lambda: self.js('return location.hash') == fragment or fragment in self.js('return location.hash'),
                  'the address never became %s' % fragment)

    def toast(self, text):
        return self.text('#toasts .toast', text, 'no toast saying %r' % text)

    def settle(self):
        """No spinner and no pending frame: what a screenshot should see."""
        self.wait(lambda: not [e for e in self.d.find_elements(By.CSS_SELECTOR, '#main .loading') if e.is_displayed()],
                  'the page is still loading')
        self.wait(lambda: self.js("return document.getAnimations().filter(a => a instanceof CSSTransition"
                                  " && a.playState === 'running').length") == 0, 'a transition never ended')
        self.d.execute_async_script('const done = arguments[0]; requestAnimationFrame(() => requestAnimationFrame(() => done()))')

    def size(self, wh):
        self.d.set_window_size(*wh)
        self.wait(lambda: abs(self.js('return window.innerWidth') - wh[0]) < 40, 'the window never became %dpx wide' % wh[0])
        self.settle()

    def shoot(self, name, narrow=True, scroll=None):
        """Screenshots of the screen as it is: laptop, then narrow (without
        the toasts of earlier steps); with scroll, that element is brought to
        the top of the view first at each width."""
        self.js("const t = document.getElementById('toasts'); if (t) t.replaceChildren()")
        self.settle()
        if scroll:
            self.js('document.querySelector(arguments[0]).scrollIntoView({block: "start"})', scroll)
        path = os.path.join(harness.SHOTS, name + '-laptop.png')
        self.d.save_screenshot(path)
        self.shots.append(path)
        if narrow:
            self.size(NARROW)
            if scroll:
                self.js('document.querySelector(arguments[0]).scrollIntoView({block: "start"})', scroll)
            path = os.path.join(harness.SHOTS, name + '-narrow.png')
            self.d.save_screenshot(path)
            self.shots.append(path)
            self.size(LAPTOP)

    # ---- the console's pieces ----
    def sign_in_link(self, role, subject=None):
        tok = self.env.token(role, sign_in=True, subject=subject)
        self.d.get('about:blank')
        self.d.get(self.env.base + '/#signin=' + tok)
        self.signed_in_as(role)
        return tok

    def signed_in_as(self, role):
        self.wait(lambda: self.js("const e = document.getElementById('user-role'); return e && e.textContent") == role,
                  'the console is not signed in as %s' % role)

    def cm_value(self):
        return self.js("return document.querySelector('.CodeMirror').CodeMirror.getValue()")

    def cm_set(self, text):
        self.js("document.querySelector('.CodeMirror').CodeMirror.setValue(arguments[0])", text)

    def results_text(self):
        return self.el('#dryrun-results').text

    def open_row(self, message_id, outcome=None):
        """Click a Live Events row; a row rebuilt under the click (its outcome
        changed) is looked up again."""
        def go():
            self.row(message_id, outcome).click()
            return True
        return self.wait(go, 'could not open the row of %s' % message_id)

    def row(self, message_id, outcome=None):
        css = '#live-rows tr[data-message-id="%s"]' % message_id
        if outcome:
            css += '[data-outcome="%s"]' % outcome
        return self.el(css, 'Live Events shows no row for %s%s' % (message_id, ' with outcome ' + outcome if outcome else ''))


def send(env, token, iid, events):
    st, body = env.api('POST', '/v1/integrations/%s/events' % iid, events, token=token)
    assert st == 202 and body.get('accepted') == len(events if isinstance(events, list) else [events]), (st, body)


def page_event(mid, path):
    return {'type': 'page', 'messageId': mid, 'name': 'Docs',
            'context': {'page': {'url': 'https://shop.example.com/' + path, 'title': 'Docs'},
                        'traits': {'email': EMAIL}, 'consent': {'canonical': {'marketing': True}}}}


def tracking_log(env, email, kind, needle):
    c = env.contact(email)
    return c and any(l.get('type') == kind and needle in l.get('value', '') for l in c.get('trackingLogs', []))


# ---- the scenarios ----------------------------------------------------------------------------

def t_quick_setup(c, s):
    """Integrations → Integration Library → ActiveCampaign under Marketing
    Automation → Install → fill in the fields → Install Integration → send a
    test event → Live Events shows it with 200/201; the contact exists."""
    env = c.env
    c.d.get(env.base + '/')
    c.el('#signin-token', 'no sign-in screen without a session')
    c.shoot('signin')

    tok = c.sign_in_link('admin', subject='ops@example.com')
    assert '#signin' not in c.d.current_url, 'the sign-in token is still in the address: ' + c.d.current_url
    st, _ = env.api('POST', '/v1/console/session', {'token': tok})
    assert st == 401, 'a sign-in link worked twice (%s)' % st
    c.text('#user-subject', 'ops@example.com')
    s['admin'] = env.token('admin')

    c.click('#nav-integrations')
    c.el('#integrations-table, .empty', 'the Integrations page did not render')
    c.shoot('integrations-empty', narrow=False)
    c.click('#tab-library')
    group = c.el('.lib-group[data-category="Marketing Automation"]', 'no Marketing Automation group in the library')
    card = group.find_element(By.CSS_SELECTOR, '#lib-activecampaign')
    assert 'ActiveCampaign' in card.text, card.text
    banner = card.find_element(By.CSS_SELECTOR, '.lib-banner-alpha')
    assert 'ALPHA' in banner.text, banner.text
    desc = card.find_element(By.CSS_SELECTOR, '.lib-desc').text.strip()
    st, cat = env.api('GET', '/v1/admin/integration-catalog/activecampaign', token=s['admin'])
    assert cat.get('description'), 'the catalog has no "description" for activecampaign'
    assert desc == cat['description'].strip(), 'the card shows %r, the catalog says %r' % (desc, cat['description'])
    # the list the library is drawn from carries it too
    listed = env.api('GET', '/v1/admin/integration-catalog', token=s['admin'])[1]['integrations']
    assert [x.get('description') for x in listed if x['vendor'] == 'activecampaign'] == [cat['description']], listed
    c.shoot('library')

    c.click('#install-activecampaign')
    form = c.el('#install-form', 'the Install form did not open')
    assert c.el('#install-description').text.strip() == cat['description'].strip()
    # Quick Setup stays short: the contact-depth options wait, closed, under Advanced
    adv = c.el('#install-advanced', 'no Advanced section in the Install form')
    assert adv.get_attribute('open') is None, 'the Advanced section starts open'
    assert 'Advanced: contact depth' in adv.text, adv.text
    depth = {'lists', 'tags', 'tag_on_events', 'custom_fields', 'deep_data', 'deep_data_store'}
    inside = {e.get_attribute('data-field') for e in adv.find_elements(By.CSS_SELECTOR, '[data-field]')}
    assert inside == depth, 'under Advanced: %s' % sorted(inside)
    for f in cat['config_fields']:
        wrap = form.find_element(By.CSS_SELECTOR, '[data-field="%s"]' % f['key'])
        text = wrap.get_attribute('textContent')    # the closed section's fields too
        assert f['label'] in text, (f['label'], text)
        inp = wrap.find_element(By.CSS_SELECTOR, '#cfg-' + f['key'])
        assert bool(wrap.find_elements(By.CSS_SELECTOR, '.req-mark')) == bool(f['required']), 'required mark of ' + f['key']
        kind = {'secret': 'password', 'boolean': 'checkbox'}.get(f['type'], 'text')
        if f['type'] == 'map':
            assert 'kv-editor' in inp.get_attribute('class') and wrap.find_elements(By.CSS_SELECTOR, '.kv-row .kv-key'), \
                f['key'] + ' is not a name/value editor'
        else:
            assert inp.get_attribute('type') == kind, '%s (%s) is a %s input' % (f['key'], f['type'], inp.get_attribute('type'))
        if f.get('help'):
            assert f['help'].replace('optional: ', '')[:30].lower() in text.lower(), 'no help for ' + f['key']
    assert cat.get('config_rules') == {'together': [['event_tracking_account_id', 'event_tracking_key']]}, cat.get('config_rules')
    group = c.el('#group-event_tracking_account_id', 'the Event Tracking fields are not grouped')
    assert {e.get_attribute('data-field') for e in group.find_elements(By.CSS_SELECTOR, '[data-field]')} == \
        {'event_tracking_account_id', 'event_tracking_key'}
    rule = group.find_element(By.CSS_SELECTOR, '.group-rule')
    assert 'Event Tracking account ID and Event Tracking key go together: fill in both or neither' in rule.text, rule.text
    c.shoot('install')

    # the rule is checked before anything is sent: the empty one of the pair is named
    c.type('#cfg-api_url', env.emu)
    c.type('#cfg-api_key', 'emulator-api-token')
    c.type('#cfg-event_tracking_account_id', '1000001')
    c.click('#install-submit')
    err = c.el('[data-field="event_tracking_key"].invalid .field-error', 'half of the Event Tracking pair was not refused')
    assert 'go together' in err.text and 'Event Tracking account ID' in err.text, err.text
    assert c.js('return document.activeElement.id') == 'cfg-event_tracking_key'
    assert env.api('GET', '/v1/admin/integrations', token=s['admin'])[1]['integrations'] == [], 'it was installed anyway'
    c.type('#cfg-event_tracking_account_id', '')

    # the server's 422 is shown on the field it names
    c.type('#cfg-api_url', 'not a url')
    c.type('#cfg-api_key', 'emulator-api-token')
    c.click('#install-submit')
    err = c.el('[data-field="api_url"].invalid .field-error', 'the 422 was not shown on the API URL field')
    assert 'api_url' in err.text or 'URL' in err.text, err.text
    c.shoot('install-error', narrow=False)

    c.type('#cfg-api_url', env.emu)
    c.type('#cfg-event_tracking_account_id', '1000001')
    c.type('#cfg-event_tracking_key', 'emulator-event-key')
    c.type('#cfg-event_tracking_url', env.emu + '/event')
    btn = c.el('#install-submit')
    assert btn.text == 'Install Integration', btn.text
    btn.click()
    c.wait(lambda: '#/integration/int_' in c.d.current_url, 'Install Integration did not open the new integration')
    iid = c.d.current_url.split('#/integration/')[1].split('/')[0]
    s['iid'] = iid
    c.text('#integration-name', 'ActiveCampaign')
    st, it = env.api('GET', '/v1/admin/integrations/' + iid, token=s['admin'])
    assert st == 200 and it['config']['api_key'] == '********', it

    # send a test event (the integration page's button posts it to intake)
    c.type('#test-email', EMAIL)
    c.click('#test-send')
    c.text('#test-result', 'Accepted')
    c.shoot('integration')
    c.click('#test-result a')
    row = c.el('#live-rows tr[data-outcome="delivered"]', 'the test event never showed as delivered in Live Events')
    status = row.find_elements(By.TAG_NAME, 'td')[4].text
    assert status in ('200', '201'), 'vendor status %r' % status
    c.click('#live-rows tr[data-outcome="delivered"]')
    c.text('#live-detail', EMAIL, 'the event detail does not show the input event')
    detail = c.el('#live-detail').text
    assert '[redacted]' in detail and 'delivered' in detail, detail[:400]
    poll(lambda: env.contact(EMAIL), 'the contact is not in the emulator')
    c.shoot('live-events')


DEPTH_EMAIL = 'depth@example.com'


def t_depth(c, s):
    """Contact depth from the Install form's Advanced section: lists "1, 2",
    tags on, a tag_on_events row and a custom_fields row are stored as an
    array, a boolean and objects; an identify with consent granted and
    traits.tags reaches the emulator with them; the integration page shows
    them readably and edits them (unchanged values are not sent)."""
    env = c.env
    c.go('#/integrations/library')
    c.click('#install-activecampaign')
    c.el('#install-form', 'the Install form did not open')
    c.type('#install-name', 'ActiveCampaign depth')
    c.type('#cfg-api_url', env.emu)
    c.type('#cfg-api_key', 'emulator-api-token')
    c.click('#install-advanced > summary')
    c.wait(lambda: c.el('#install-advanced').get_attribute('open') is not None, 'the Advanced section did not open')
    c.text('#install-advanced .adv-count', '6 optional settings')
    c.type('#cfg-lists', '1, 2')
    c.text('#cfg-lists-values', '2 values', 'the list does not show the values it will send')
    assert [e.text for e in c.d.find_elements(By.CSS_SELECTOR, '#cfg-lists-values .chip')] == ['1', '2']
    c.click('[data-field="tags"] .switch')
    c.wait(lambda: c.el('#cfg-tags', visible=False).is_selected(), 'the tags switch did not turn on')
    c.text('[data-field="tags"] .switch-state', 'On')
    c.type('#cfg-tag_on_events .kv-key', 'Order Completed')
    c.type('#cfg-tag_on_events .kv-value', 'purchased')
    c.type('#cfg-custom_fields .kv-key', 'birthday')
    c.type('#cfg-custom_fields .kv-value', 'BIRTHDAY')
    # a second row with a name and no value is refused here, then removed
    c.click('#cfg-custom_fields .kv-add')
    c.wait(lambda: len(c.d.find_elements(By.CSS_SELECTOR, '#cfg-custom_fields .kv-row')) == 2, 'Add row added no row')
    rows = c.d.find_elements(By.CSS_SELECTOR, '#cfg-custom_fields .kv-row')
    assert c.js('return document.activeElement') == rows[1].find_element(By.CSS_SELECTOR, '.kv-key'), 'the new row is not focused'
    rows[1].find_element(By.CSS_SELECTOR, '.kv-key').send_keys('plan')
    c.text('#install-advanced .adv-count', '4 of 6 set')
    c.shoot('install-advanced', scroll='#install-advanced')
    c.click('#install-submit')
    err = c.el('[data-field="custom_fields"].invalid .field-error', 'a row without a value was not refused')
    assert 'Row 2' in err.text and 'plan' in err.text, err.text
    assert c.js('return document.activeElement') == rows[1].find_element(By.CSS_SELECTOR, '.kv-value')
    rows[1].find_element(By.CSS_SELECTOR, '.kv-remove').click()
    c.wait(lambda: len(c.d.find_elements(By.CSS_SELECTOR, '#cfg-custom_fields .kv-row')) == 1, 'the row was not removed')
    c.click('#install-submit')
    c.wait(lambda: '#/integration/int_' in c.d.current_url, 'Install Integration did not open the new integration')
    iid = c.d.current_url.split('#/integration/')[1].split('/')[0]
    assert iid != s['iid']

    # stored as an array, a boolean and objects; the untouched boolean left out
    st, it = env.api('GET', '/v1/admin/integrations/' + iid, token=s['admin'])
    cfg = it['config']
    assert cfg['lists'] == ['1', '2'], cfg
    assert cfg['tags'] is True, cfg
    assert cfg['tag_on_events'] == {'Order Completed': 'purchased'}, cfg
    assert cfg['custom_fields'] == {'birthday': 'BIRTHDAY'}, cfg
    assert 'deep_data' not in cfg, cfg
    assert cfg['api_key'] == '********', cfg

    # shown readably: chips, on/off, name → value
    c.text('#integration-name', 'ActiveCampaign depth')
    card = c.el('#config-values', 'the configuration is not shown')
    assert [e.text for e in card.find_elements(By.CSS_SELECTOR, 'dd[data-field="lists"] .chip')] == ['1', '2']
    assert card.find_element(By.CSS_SELECTOR, 'dd[data-field="tags"] .badge-ok').text == 'on'
    assert card.find_element(By.CSS_SELECTOR, 'dd[data-field="deep_data"] .badge').text == 'off'
    line = card.find_element(By.CSS_SELECTOR, 'dd[data-field="tag_on_events"] .map-view li').text
    assert line.split() == ['Order', 'Completed', '→', 'purchased'], line
    assert card.find_element(By.CSS_SELECTOR, 'dd[data-field="custom_fields"]').text.split() == ['birthday', '→', 'BIRTHDAY']
    c.shoot('integration-depth')

    # an identify with consent granted and traits.tags, then the event of tag_on_events
    consent = {'canonical': {'marketing': True}}
    send(env, s['admin'], iid, [
        {'type': 'identify', 'messageId': 'depth-1', 'context': {'consent': consent},
         'traits': {'email': DEPTH_EMAIL, 'first_name': 'Deep', 'tags': ['VIP', 'Early Bird'], 'birthday': '1990-04-01'}},
        {'type': 'track', 'event': 'Order Completed', 'messageId': 'depth-2', 'properties': {'order_id': 'D-1', 'total': 10},
         'context': {'traits': {'email': DEPTH_EMAIL}, 'consent': consent}},
    ])

    def emulated():
        st = env.emulator('/_emulator/state?account=0')
        tags = st['contact_tags'].get(DEPTH_EMAIL, [])
        if st['memberships'].get(DEPTH_EMAIL) == {'1': 1, '2': 1} and {'VIP', 'Early Bird', 'purchased'} <= set(tags) \
                and st['field_values'].get(DEPTH_EMAIL, {}).get('Birthday') == '1990-04-01':
            return st
        return None
    poll(emulated, 'the emulator does not hold lists 1 and 2, the tags and the birthday of %s' % DEPTH_EMAIL)
    c.click('#itab-live')
    c.open_row('depth-1', 'delivered')
    c.text('#live-detail', '/api/3/contactLists', 'the detail does not show the list subscriptions')
    c.text('#live-detail', '/api/3/contactTags')

    # edit: nothing changed sends nothing
    c.click('#itab-overview')
    c.click('#config-edit')
    c.wait(lambda: c.el('#edit-advanced').get_attribute('open') is not None, 'the Advanced section of the edit is closed though set')
    assert c.el('#edit-lists').get_attribute('value') == '1, 2'
    assert c.el('#edit-tags', visible=False).is_selected()
    assert [e.get_attribute('value') for e in c.d.find_elements(By.CSS_SELECTOR, '#edit-tag_on_events input')] == ['Order Completed', 'purchased']
    c.click('#config-save')
    c.el('#config-card #config-edit', 'Save without a change did not return to the configuration')
    assert env.api('GET', '/v1/admin/integrations/' + iid, token=s['admin'])[1]['revision'] == 1, 'an unchanged edit made a revision'

    # edit: a list value less, the map row removed, a custom field added, tags off
    c.click('#config-edit')
    c.type('#edit-lists', '2')
    c.click('#edit-tag_on_events .kv-remove')
    c.click('#edit-custom_fields .kv-add')
    rows = c.d.find_elements(By.CSS_SELECTOR, '#edit-custom_fields .kv-row')
    rows[1].find_element(By.CSS_SELECTOR, '.kv-key').send_keys('plan')
    rows[1].find_element(By.CSS_SELECTOR, '.kv-value').send_keys('Plan')
    c.click('[data-field="tags"] .switch')
    c.shoot('config-edit-depth', scroll='#edit-advanced')
    c.click('#config-save')
    c.toast('Saved: revision 2')
    c.el('#config-card #config-edit')
    cfg = env.api('GET', '/v1/admin/integrations/' + iid, token=s['admin'])[1]['config']
    assert cfg['lists'] == ['2'] and cfg['tags'] is False, cfg
    assert 'tag_on_events' not in cfg, cfg
    assert cfg['custom_fields'] == {'birthday': 'BIRTHDAY', 'plan': 'Plan'}, cfg
    c.text('#config-values dd[data-field="custom_fields"]', 'plan')
    c.text('#config-values dd[data-field="tag_on_events"]', 'not set')

    # the rest of the suite expects the Quick Setup integration alone
    st, _ = env.api('DELETE', '/v1/admin/integrations/' + iid, token=s['admin'])
    assert st in (200, 204), st


def t_webinar(c, s):
    """Enable "Webinar Registered" from the integration page, send it, see it delivered."""
    env, iid = c.env, s['iid']
    c.go('#/integration/%s/events' % iid)
    c.el('#events-table')
    c.type('#custom-event-name', 'Webinar Registered')
    c.click('#custom-event-enable')
    row = c.el('#events-rows tr[data-event="Webinar Registered"]', 'Webinar Registered is not in the event table')
    c.wait(lambda: row.find_element(By.CSS_SELECTOR, 'input').is_selected(), 'its switch is not on')
    c.text('#integration-revision', 'config rev 2')
    # the switch: off (a revision), on again (another)
    row.find_element(By.CSS_SELECTOR, '.switch').click()
    c.text('#integration-revision', 'config rev 3')
    st, it = env.api('GET', '/v1/admin/integrations/' + iid, token=s['admin'])
    assert it['events']['Webinar Registered']['enabled'] is False, it['events']
    c.el('#events-rows tr[data-event="Webinar Registered"] .switch').click()
    c.text('#integration-revision', 'config rev 4')
    st, it = env.api('GET', '/v1/admin/integrations/' + iid, token=s['admin'])
    assert it['events']['Webinar Registered']['enabled'] is True, it['events']
    c.shoot('events')

    send(env, s['admin'], iid, {'type': 'track', 'event': 'Webinar Registered', 'messageId': 'webinar-1',
                                'properties': {'webinar': 'Engines 101'},
                                'context': {'traits': {'email': EMAIL}, 'consent': {'canonical': {'marketing': True}}}})
    c.click('#itab-live')
    row = c.row('webinar-1', 'delivered')
    assert 'Webinar Registered' in row.text, row.text
    poll(lambda: tracking_log(env, EMAIL, 'webinar_registered', 'Engines 101'), 'the emulator has no webinar_registered event')

    # a retry in progress shows as such, then delivered (Retry-After keeps it waiting 3 s)
    env.emulator('/_emulator/faults', {'fail_next': 1, 'status': 503, 'retry_after': 3})
    send(env, s['admin'], iid, {'type': 'track', 'event': 'Webinar Registered', 'messageId': 'webinar-2',
                                'properties': {'webinar': 'Engines 102'},
                                'context': {'traits': {'email': EMAIL}, 'consent': {'canonical': {'marketing': True}}}})
    c.open_row('webinar-2', 'retrying')
    c.text('#live-detail', 'Retrying', 'the detail does not say the event is retrying')
    c.text('#live-detail', '503')
    c.shoot('live-retrying', narrow=False)
    c.row('webinar-2', 'delivered')
    c.text('#live-detail .decision', 'delivered', 'the open detail did not follow the retry to its end')
    c.click('#itab-revisions')
    c.el('#revision-list li[data-revision="4"]', 'the revisions list has no revision 4')
    c.shoot('revisions', narrow=False)


def t_editor(c, s):
    """Edit page.lua: the dry-run pane follows; a syntax error is marked at its
    line and the running blueprint is untouched; Save makes a revision the
    next event uses; roll back."""
    env, iid = c.env, s['iid']
    disk = os.path.join(env.blueprints, 'activecampaign', 'page.lua')
    original = open(disk).read()
    c.click('#nav-blueprints')
    c.el('#bp-activecampaign')
    c.shoot('blueprints', narrow=False)
    c.click('#bp-activecampaign')
    c.click('.file-tab[data-file="page.lua"]')
    c.wait(lambda: c.cm_value() == original, 'page.lua did not open in the editor')
    c.el('#dryrun-status[data-state="ok"]', 'the first dry-run never finished')
    assert '"page_view"' in c.results_text()

    # a pasted sample joins the examples
    c.click('#sample-paste')
    c.type('#paste-json', json.dumps(page_event('pasted-1', 'pasted')))
    c.click('#paste-add')
    c.el('#sample-list .sample[data-source="pasted"]', 'the pasted event is not among the samples')
    c.text('#dryrun-results', 'pasted-1', 'the dry-run does not include the pasted event')

    # typed: the dry-run of the unsaved edit follows
    c.js("""const cm = document.querySelector('.CodeMirror').CodeMirror;
            const i = cm.getValue().indexOf('"page_view", {') + '"page_view'.length;
            cm.focus(); cm.setCursor(cm.posFromIndex(i));""")
    c.d.find_element(By.CSS_SELECTOR, '.CodeMirror textarea').send_keys('_typed')
    c.text('#dryrun-results', 'page_view_typed', 'the dry-run pane did not follow the typed edit')
    c.wait(lambda: c.el('#dryrun-changed').text != '0 changed', 'no result is marked changed')
    c.shoot('editor')

    # the golden fixtures against the edit: all-rows has a page event, so it differs
    c.click('#side-tests')
    c.click('#tests-run')
    c.text('#tests-summary', 'failed', 'the fixtures did not fail against the edit')
    case = c.text('#tests-results .case-fail', 'page_view_typed', 'no failing case shows the difference')
    assert 'expected' not in case.text or '"page_view"' in case.text, case.text
    c.shoot('editor-tests', narrow=False)
    c.click('#side-dryrun')

    # a syntax error (line 3 today): marked there; nothing on disk or in the workers changes
    broken = original.replace('"page_view", {', '"page_view" {')
    bad_line = next(i + 1 for i, l in enumerate(broken.split('\n')) if l.endswith('"page_view" {'))
    c.cm_set(broken)
    c.el('#dryrun-status[data-state="error"]', 'a Lua syntax error did not fail the dry-run')
    c.el('.CodeMirror .bp-gutter-error', 'no gutter marker for the error')
    c.el('.CodeMirror .bp-underline-error', 'the error line is not underlined')
    line = c.js("""const w = document.querySelector('.CodeMirror .bp-line-error');
                   return w && w.querySelector('.CodeMirror-linenumber').textContent""")
    assert line == str(bad_line), 'the error is marked on line %r, not %d' % (line, bad_line)
    c.el('.file-tab[data-file="page.lua"].has-error', 'the page.lua tab is not marked')
    c.text('#load-errors', 'page.lua:%d' % bad_line)
    c.shoot('editor-error')
    assert open(disk).read() == original, 'the broken edit reached the disk'
    st, files = env.api('GET', '/v1/admin/blueprints/activecampaign/files', token=s['admin'])
    assert [f['content'] for f in files['files'] if f['name'] == 'page.lua'] == [original]
    send(env, s['admin'], iid, page_event('page-1', 'syntax'))
    poll(lambda: tracking_log(env, EMAIL, 'page_view', 'shop.example.com/syntax'),
         'an event sent during the broken edit was not mapped by the running version')

    # save a good edit: a new revision, and the next event uses it
    c.cm_set(original.replace('"page_view"', '"page_view_v2"'))
    c.el('#dryrun-status[data-state="ok"]')
    c.text('#dryrun-results', 'page_view_v2')
    c.type('#save-message', 'Rename the page event')
    c.click('#editor-save')
    c.toast('Saved revision')
    c.wait(lambda: not c.el('#editor-save').is_enabled(), 'Save still offered after saving')
    assert 'page_view_v2' in open(disk).read()
    st, revs = env.api('GET', '/v1/admin/blueprints/activecampaign/revisions', token=s['admin'])
    newest = revs['revisions'][0]
    assert newest['message'] == 'Rename the page event' and newest['number'] == 2, newest
    assert any(r['number'] == 1 for r in revs['revisions']), revs
    c.click('#side-history')
    item = c.el('#history-list li[data-number="2"]')
    assert 'Rename the page event' in item.text, item.text
    item.find_element(By.CSS_SELECTOR, '[data-diff="2"]').click()
    c.text('#history-list li[data-number="2"] .diff-add', 'page_view_v2', 'the revision diff does not show the change')
    c.shoot('editor-history')
    send(env, s['admin'], iid, page_event('page-2', 'v2'))
    poll(lambda: tracking_log(env, EMAIL, 'page_view_v2', 'shop.example.com/v2'), 'the next event did not use the saved edit')
    def judged():
        live = env.api('GET', '/v1/admin/integrations/%s/live-events?limit=50' % iid, token=s['admin'])[1]
        return [e['outcome'] for e in live['events'] if e['outcome'].get('message_id') == 'page-2' and e['outcome'].get('outcome') == 'delivered']
    o = poll(judged, 'Live Events does not show page-2 delivered')[0]
    assert o['blueprint_revision'] == newest['revision'], (o['blueprint_revision'], newest['revision'])

    # roll back to the state found on disk
    c.click('[data-rollback="1"]')
    c.click('#confirm-ok')
    c.toast('Rolled back')
    c.wait(lambda: c.cm_value() == original, 'the editor does not show the rolled-back page.lua')
    assert open(disk).read() == original
    st, revs = env.api('GET', '/v1/admin/blueprints/activecampaign/revisions', token=s['admin'])
    assert revs['revisions'][0]['number'] == 3 and 'rollback' in revs['revisions'][0]['message'], revs['revisions'][0]
    send(env, s['admin'], iid, page_event('page-3', 'rolled-back'))
    poll(lambda: tracking_log(env, EMAIL, 'page_view', 'shop.example.com/rolled-back'), 'the rollback did not reach the workers')
    # a YAML error is marked the same way; Discard brings the saved file back
    c.click('#side-dryrun')
    c.click('.file-tab[data-file="blueprint.yaml"]')
    yaml = c.cm_value()
    assert '\nstatus: alpha\n' in yaml
    c.cm_set(yaml.replace('\nstatus: alpha\n', '\nstatus alpha: x\n', 1))
    yaml_line = yaml.split('\n').index('status: alpha') + 1
    c.el('#dryrun-status[data-state="error"]', 'a YAML error did not fail the dry-run')
    c.el('.CodeMirror .bp-gutter-error')
    line = c.js("""const w = document.querySelector('.CodeMirror .bp-line-error');
                   return w && w.querySelector('.CodeMirror-linenumber').textContent""")
    assert line == str(yaml_line), 'the YAML error is marked on line %r, not %d' % (line, yaml_line)
    c.click('#editor-discard')
    c.click('#confirm-ok')
    c.el('#dryrun-status[data-state="ok"]', 'the dry-run did not recover after Discard')
    assert c.cm_value() == yaml
    c.gone('.CodeMirror .bp-gutter-error', 'the error marker outlived the discarded edit')

    c.click('#nav-audit')
    c.text('#audit-table', 'blueprint.rollback', 'the audit log does not show the rollback')
    c.shoot('audit')


def t_hostile_event(c, s):
    """Event properties holding <img onerror> and </script> show as text and run nothing."""
    env, iid = c.env, s['iid']
    c.js("""window.__xss = 0; window.__csp = [];
            document.addEventListener('securitypolicyviolation', e => window.__csp.push(e.violatedDirective + ' ' + (e.sample || '')));""")
    consent = {'canonical': {'marketing': True}}
    send(env, s['admin'], iid, [
        {'type': 'track', 'event': 'Webinar Registered', 'messageId': 'xss-1',
         'properties': {'webinar': XSS_IMG, 'note': XSS_SCRIPT}, 'context': {'traits': {'email': 'xss@example.com'}, 'consent': consent}},
        {'type': 'identify', 'messageId': 'xss-2',
         'traits': {'email': 'xss@example.com', 'first_name': XSS_IMG, 'last_name': XSS_SCRIPT}, 'context': {'consent': consent}},
        {'type': 'track', 'event': XSS_IMG + XSS_SCRIPT, 'messageId': 'xss-3', 'properties': {}, 'context': {'consent': consent}},
    ])
    c.go('#/live/' + iid)
    c.open_row('xss-1', 'delivered')
    detail = c.text('#live-detail .input-event', XSS_IMG, 'the input event does not show the <img> text').text
    assert XSS_SCRIPT in detail, detail
    c.text('#live-detail', 'eventdata')
    c.open_row('xss-2', 'delivered')
    c.text('#live-detail .input-event', XSS_SCRIPT)
    c.row('xss-3')
    names = c.el('#live-rows').text
    assert XSS_IMG in names, 'the hostile event name is not shown as text'
    c.shoot('live-detail')
    c.go('#/integration/%s/events' % iid)
    c.text('#seen-custom', XSS_IMG, 'the hostile event name is not listed as text among events seen')
    # picked from Live Events into the editor's samples: still text
    c.go('#/live/' + iid)
    c.open_row('xss-1')
    c.click('#detail-to-editor')
    c.el('#sample-list .sample[data-source="live"]', 'the picked event is not among the samples')
    c.el('#dryrun-status[data-state="ok"]')
    c.text('#dryrun-results', 'xss-1')
    assert XSS_IMG in c.results_text()
    assert c.js('return window.__xss') == 0, 'injected code ran'
    assert c.js("return [...document.querySelectorAll('img')].filter(i => i.getAttribute('src') === 'x').length") == 0, \
        'an <img> from event data became an element'
    assert c.js("return [...document.querySelectorAll('script')].filter(s => !s.src).length") == 0, 'an inline <script> appeared'
    assert c.js('return window.__csp') == [], 'the page tried something the CSP blocked: %r' % c.js('return window.__csp')
    try:
        c.d.switch_to.alert
        raise AssertionError('an alert opened')
    except NoAlertPresentException:
        pass


def t_roles(c, s):
    """Replay (one, all) for an admin; a viewer is offered no install, edit or
    replay, and the API refuses them."""
    env, iid = c.env, s['iid']
    consent = {'canonical': {'marketing': True}}

    def dead(mids):
        env.emulator('/_emulator/faults', {'fail_next': len(mids), 'status': 400})
        send(env, s['admin'], iid, [{'type': 'identify', 'messageId': m, 'traits': {'email': m + '@example.com'},
                                     'context': {'consent': consent}} for m in mids])
        poll(lambda: {d['outcome']['message_id'] for d in
                      env.api('GET', '/v1/admin/integrations/%s/dead-letters' % iid, token=s['admin'])[1]['dead_letters']} >= set(mids),
             'no dead letters for %s' % mids)

    # the masked config, edited: a 422 on its field, then a new revision
    before = env.api('GET', '/v1/admin/integrations/' + iid, token=s['admin'])[1]['revision']
    c.go('#/integration/%s/overview' % iid)
    c.click('#config-edit')
    c.type('#edit-event_tracking_url', 'not a url')
    # a new URL for a secret needs the secret again (else that is the 422)
    c.type('#edit-event_tracking_key', 'emulator-event-key')
    c.click('#config-save')
    c.el('#config-form [data-field="event_tracking_url"].invalid .field-error', 'the 422 is not shown on its field')
    c.type('#edit-event_tracking_url', env.emu + '/event')
    c.type('#edit-event_tracking_key', 'emulator-event-key')
    c.type('#edit-api_key', 'emulator-api-token')
    c.click('#config-save')
    c.toast('Saved: revision %d' % (before + 1))
    c.el('#config-card #config-edit', 'the configuration card did not come back')
    assert 'emulator-api-token' not in c.el('#config-card').text, 'a secret is shown'
    after = env.api('GET', '/v1/admin/integrations/' + iid, token=s['admin'])[1]
    assert after['revision'] == before + 1 and after['config']['api_key'] == '********', after

    dead(['dl-1'])
    c.go('#/integration/%s/dead-letters' % iid)
    row = c.el('#dl-table tbody tr', 'the dead letter is not listed')
    c.el('#replay-all')
    c.shoot('dead-letters')
    row.find_element(By.CSS_SELECTOR, '[data-replay]').click()
    c.toast('Replayed 1')
    c.el('#dead-letters .empty', 'the replayed dead letter is still listed')
    poll(lambda: env.contact('dl-1@example.com'), 'the replayed event was not delivered')

    dead(['dl-2', 'dl-3'])
    c.go('#/integration/%s/overview' % iid)
    c.go('#/integration/%s/dead-letters' % iid)
    c.wait(lambda: len(c.d.find_elements(By.CSS_SELECTOR, '#dl-table tbody tr')) == 2, 'two dead letters are not listed')
    c.click('#replay-all')
    c.click('#confirm-ok')
    c.toast('Replayed 2')
    c.el('#dead-letters .empty')
    poll(lambda: env.contact('dl-3@example.com'), 'replay all did not deliver')
    dead(['dl-4'])

    # sign-out ends the session on the server: a copy of its token is refused
    kept = json.loads(c.d.execute_script("return sessionStorage.getItem('bp.console.session')"))['token']
    assert env.api('GET', '/v1/console/me', token=kept)[0] == 200
    c.click('#sign-out')
    poll(lambda: env.api('GET', '/v1/console/me', token=kept)[0] == 401, 'the signed-out session token still works')

    # a viewer, with a pasted API token
    viewer = env.token('viewer', subject='auditor@example.com')
    c.type('#signin-token', viewer)
    c.click('#signin-submit')
    c.signed_in_as('viewer')
    c.go('#/integrations/library')
    card = c.el('#lib-activecampaign')
    c.absent('#install-activecampaign')
    assert 'needs the editor role' in card.text, card.text
    c.go('#/install/activecampaign')
    c.el('.page-install .alert-info', 'a viewer is not told why there is no form')
    c.absent('#install-form')
    c.go('#/integration/%s/overview' % iid)
    c.el('#config-card')
    c.absent('#config-edit')
    c.absent('#test-send')
    c.go('#/integration/%s/events' % iid)
    c.el('#events-rows tr')
    assert all(not i.is_enabled() for i in c.d.find_elements(By.CSS_SELECTOR, '#events-rows input')), 'a viewer can flip an event switch'
    c.absent('#custom-event-name')
    c.go('#/integration/%s/dead-letters' % iid)
    c.el('#dl-table tbody tr').click()
    c.el('#dl-detail .detail')
    c.absent('[data-replay]')
    c.absent('#replay-all')
    c.absent('#detail-replay')
    c.shoot('viewer-dead-letters', narrow=False)
    c.go('#/editor/activecampaign')
    c.el('.CodeMirror')
    c.el('#history-list, #history .empty', 'a viewer sees no history')
    assert c.js("return document.querySelector('.CodeMirror').CodeMirror.getOption('readOnly')") is True
    c.absent('#editor-save')
    c.absent('#side-dryrun')
    c.absent('[data-rollback]')
    c.shoot('viewer-editor', narrow=False)

    # the API refuses them all the same
    for method, path, body in [
        ('POST', '/v1/admin/integration-catalog/activecampaign/install',
         {'name': 'x', 'variant': 'default', 'config': {'api_url': env.emu, 'api_key': 'k'}, 'delivery_mode': 'server_side'}),
        ('PATCH', '/v1/admin/integrations/' + iid, {'events': {'Coupon Applied': {'enabled': True}}}),
        ('POST', '/v1/admin/integrations/%s/dead-letters/replay' % iid, {'all': True}),
        ('PUT', '/v1/admin/blueprints/activecampaign/files', {'files': {'page.lua': '-- x'}, 'message': 'x'}),
        ('POST', '/v1/admin/blueprints/activecampaign/dry-run', {'files': {}, 'events': []}),
        ('POST', '/v1/admin/blueprints/activecampaign/rollback', {'number': 1}),
    ]:
        st, body = env.api(method, path, body, token=viewer)
        assert st == 403, '%s %s as a viewer: %s %s' % (method, path, st, body)
    st, _ = env.api('GET', '/v1/admin/integrations/%s/dead-letters' % iid, token=viewer)
    assert st == 200

    # delete, with confirmation, as an admin
    c.sign_in_link('admin')
    c.go('#/integration/%s/settings' % iid)
    c.click('#delete-integration')
    ok = c.el('#confirm-ok')
    assert not ok.is_enabled(), 'delete is confirmed without typing the name'
    c.shoot('delete-confirm', narrow=False)
    c.type('#confirm-input', 'ActiveCampaign')
    c.click('#confirm-ok')
    c.toast('Deleted')
    c.wait(lambda: c.js('return location.hash') == '#/integrations', 'delete did not return to Integrations')
    c.el('#main .empty', 'the deleted integration is still listed')
    listed = env.api('GET', '/v1/admin/integrations', token=s['admin'])[1]['integrations']
    assert all(i['id'] != iid or i.get('deleted') for i in listed), listed


# ---- health at a glance, forms, test events, advice, cosmetics ----------------------------------

CONSENT = {'canonical': {'marketing': True}}


def track(name, mid, email=EMAIL):
    return {'type': 'track', 'event': name, 'messageId': mid, 'properties': {'source': 'browser test'},
            'context': {'traits': {'email': email}, 'consent': CONSENT}}


def in_view(c, css):
    return c.js("const r = document.querySelector(arguments[0]).getBoundingClientRect();"
                " return r.top >= 0 && r.bottom <= window.innerHeight", css)


def as_admin(c):
    """Each of these scenarios starts as an admin (roles may end as a viewer)."""
    if c.js("const e = document.getElementById('user-role'); return e && e.textContent") != 'admin':
        c.sign_in_link('admin', subject='ops@example.com')


def t_health(c, s):
    """A wrong key pauses the integration: its page says so first (badge, the
    vendor's words, since when, what to do), the list too; after the key is
    fixed the held event is delivered and it is delivering again.  The tiles
    say they count since the server started and show the last hour."""
    as_admin(c)
    env, iid = c.env, s['iid']
    path = '/v1/admin/integrations/' + iid
    st, _ = env.api('PATCH', path, {'config': {'api_key': 'a-wrong-key'}}, token=s['admin'])
    assert st == 200, st
    send(env, s['admin'], iid, {'type': 'identify', 'messageId': 'health-1', 'traits': {'email': 'health@example.com'},
                                'context': {'consent': CONSENT}})
    poll(lambda: env.api('GET', path, token=s['admin'])[1]['health']['state'] == 'paused', 'the API never said paused')
    poll(lambda: env.api('GET', path, token=s['admin'])[1].get('now', {}).get('held') == 1, 'the event was never held')
    c.go('#/integration/%s/overview' % iid)
    c.el('#integration-health[data-health="paused"]', 'the page does not show a paused badge')
    alert = c.el('#health-alert[data-health="paused"]', 'the page does not say why delivery stopped')
    assert 'HTTP 403' in alert.text and 'held' in alert.text, alert.text
    c.el('#health-since', 'the alert does not say since when')
    said = c.el('#health-vendor', 'the alert does not give the vendor\'s answer').text
    assert '403' in said and 'No Result found' in said, said
    assert 'a-wrong-key' not in c.d.page_source, 'the key is on the page'
    assert c.js("return !!(document.getElementById('health-alert').compareDocumentPosition("
                "document.getElementById('counters')) & Node.DOCUMENT_POSITION_FOLLOWING)"), 'the health is not above the tiles'
    held = c.el('#counters [data-counter="held"]')
    assert 'since start' in held.text and '1 in the last hour' in held.text, held.text
    c.text('#held-now', '1 held now')
    c.text('#counters-window', 'since the server started')
    c.shoot('integration-paused', narrow=False)
    c.go('#/integrations')
    c.el('#integrations-table tr[data-id="%s"] [data-health="paused"]' % iid, 'the list does not show it paused')

    st, _ = env.api('PATCH', path, {'config': {'api_key': 'emulator-api-token'}}, token=s['admin'])
    assert st == 200, st
    c.go('#/integration/%s/overview' % iid)
    c.el('#integration-health[data-health="delivering"]', 'the page never showed it delivering again')
    c.gone('#health-alert', 'the paused alert outlived the fix')
    poll(lambda: env.contact('health@example.com'), 'the held event was not delivered after the fix')
    # the tile still counts the episode since start, and says nothing is held now
    c.go('#/integration/%s/overview' % iid)
    c.text('#held-now', '0 held now')


def t_install_conflict(c, s):
    """Installing under a name taken: the name field is marked, scrolled to
    and focused (it is far above the button)."""
    as_admin(c)
    env = c.env
    c.go('#/install/activecampaign')
    c.el('#install-form', 'the Install form did not open')
    assert c.el('#install-name').get_attribute('value') == 'ActiveCampaign'
    c.type('#cfg-api_url', env.emu)
    c.type('#cfg-api_key', 'emulator-api-token')
    c.click('#install-submit')
    err = c.text('#install-name-error', 'already exists', 'the 409 is not shown on the name field')
    assert 'invalid' in c.js("return document.getElementById('install-name').closest('.field').className"), 'the name field is not marked'
    c.wait(lambda: c.js('return document.activeElement.id') == 'install-name', 'the name field is not focused')
    assert in_view(c, '#install-name'), 'the name field is out of sight'
    c.shoot('install-conflict', narrow=False)
    assert err.text


def t_test_events(c, s):
    """A custom event dropped before it is enabled is offered by name; once
    enabled it can be sent as a test event (every enabled event can) and it
    is delivered."""
    as_admin(c)
    env, iid = c.env, s['iid']
    send(env, s['admin'], iid, track('Coupon Applied', 'coupon-0'))
    poll(lambda: [e for e in env.api('GET', '/v1/admin/integrations/%s/live-events?outcome=drop' % iid, token=s['admin'])[1]['events']
                  if e['outcome'].get('message_id') == 'coupon-0'], 'the custom event was not dropped')
    c.go('#/integration/%s/events' % iid)
    c.el('#custom-event-seen option[value="Coupon Applied"]', 'the name seen in Live Events is not offered', visible=False)
    c.type('#custom-event-name', 'Coupon Applied')
    c.click('#custom-event-enable')
    c.el('#events-rows tr[data-event="Coupon Applied"]', 'Coupon Applied was not enabled')
    c.click('#itab-overview')
    c.el('#test-kind option', 'no test event card', visible=False)
    options = c.js("return [...document.querySelectorAll('#test-kind option')].map(o => o.value)")
    st, it = env.api('GET', '/v1/admin/integrations/' + iid, token=s['admin'])
    enabled = [n for n, e in it['events'].items() if e['enabled']]
    assert set(enabled) <= set(options), 'offered %s, enabled %s' % (options, enabled)
    assert options[0] == 'identify', options
    c.js("const k = document.getElementById('test-kind'); k.value = 'Coupon Applied'; k.dispatchEvent(new Event('change'))")
    c.type('#test-email', EMAIL)
    c.click('#test-send')
    c.text('#test-result', 'Accepted')

    def delivered():
        live = env.api('GET', '/v1/admin/integrations/%s/live-events?outcome=delivered' % iid, token=s['admin'])[1]
        return [e for e in live['events'] if e['outcome'].get('event') == 'Coupon Applied'
                and e['outcome'].get('message_id', '').startswith('console-test-')]
    poll(delivered, 'the Coupon Applied test event was not delivered')
    # another track event, by name, with the names seen offered
    c.js("const k = document.getElementById('test-kind'); k.value = k.options[k.options.length - 1].value;"
         " k.dispatchEvent(new Event('change'))")
    c.el('#test-event-name', 'no name field for another track event')
    c.shoot('test-events', narrow=False)


def t_advice(c, s):
    """A custom event's drop reason gives the console's fix (the Events tab),
    not the config file's; the sidebar's Live Events opens the integration
    being viewed."""
    as_admin(c)
    env, iid = c.env, s['iid']
    send(env, s['admin'], iid, track('Trial Started', 'advice-1'))
    c.go('#/integration/%s/live' % iid)
    c.open_row('advice-1', 'drop')
    reason = c.el('#detail-reason').text
    assert "custom event not enabled: 'Trial Started'" in reason and 'add to the config' not in reason, reason
    link = c.el('#detail-advice a', 'no advice pointing at the Events tab')
    assert link.get_attribute('href').endswith('#/integration/%s/events' % iid), link.get_attribute('href')
    assert 'add to the config' not in c.row('advice-1', 'drop').text

    st, other = env.api('POST', '/v1/admin/integration-catalog/activecampaign/install',
                        {'name': 'Second', 'variant': 'default', 'delivery_mode': 'server_side',
                         'config': {'api_url': env.emu, 'api_key': 'emulator-api-token'}}, token=s['admin'])
    assert st == 201, (st, other)
    try:
        for want in (other['id'], iid):
            c.go('#/integration/%s/overview' % want)
            c.text('#integration-id', want)
            c.click('#nav-live')
            c.wait(lambda: c.js("const e = document.getElementById('live-integration'); return e && e.value") == want,
                   'the sidebar\'s Live Events did not open the integration being viewed (%s)' % want)
    finally:
        env.api('DELETE', '/v1/admin/integrations/' + other['id'], token=s['admin'])


def t_cosmetics(c, s):
    """No sideways scrollbar on the editor's collapsed
    sidebar; a hunk header reads "@@ -a,b +c,d @@"; "(8 s ago)" keeps
    updating; Enter after "then" indents by one step; a boolean not set reads
    "off (not set)"; pasted samples survive a reload."""
    as_admin(c)
    env, iid = c.env, s['iid']
    c.go('#/integration/%s/overview' % iid)
    views = c.js("return [...document.querySelectorAll('#config-values .bool-view')].map(e => e.textContent)")
    assert views and not [v for v in views if 'off not set' in v], views

    disk = os.path.join(env.blueprints, 'activecampaign', 'page.lua')
    original = open(disk).read()
    st, _ = env.api('PUT', '/v1/admin/blueprints/activecampaign/files',
                    {'files': {'page.lua': original + '-- a comment\n'}, 'message': 'cosmetics: a comment'}, token=s['admin'])
    assert st in (200, 201), st
    c.go('#/editor/activecampaign')
    c.el('.CodeMirror')
    c.settle()
    side = c.js("""const e = document.getElementById('sidebar'); const right = e.getBoundingClientRect().left + e.clientWidth;
        const style = getComputedStyle(e);
        const inner = right - parseFloat(style.paddingRight);
        const wide = [...e.querySelectorAll('*')].filter(x => x.getBoundingClientRect().right > inner + 0.5)
          .map(x => x.tagName + '.' + x.className + ' ' + Math.round(x.getBoundingClientRect().right - inner) + 'px');
        return [e.scrollWidth, e.clientWidth, wide.slice(0, 4)]""")
    assert side[0] <= side[1], 'the collapsed sidebar scrolls sideways (%s > %s): %s' % tuple(side)

    # Enter indents the next line by one step (2 spaces) however many blocks
    # the line opens: `helpers.x(ctx, "a", {` is one step, not two
    c.click('.file-tab[data-file="page.lua"]')
    c.wait(lambda: 'a comment' in c.cm_value(), 'page.lua did not open')
    for line, want in (('  if x then', '    '), ('  return helpers.track(ctx, "a", {', '    '), ('  local y = 1', '  ')):
        c.js("""const cm = document.querySelector('.CodeMirror').CodeMirror;
            cm.setValue('local function f(x)\\n' + arguments[0]);
            cm.focus(); cm.setCursor({ line: 1, ch: cm.getLine(1).length });""", line)
        c.d.find_element(By.CSS_SELECTOR, '.CodeMirror textarea').send_keys(Keys.ENTER)
        indent = c.js("return document.querySelector('.CodeMirror').CodeMirror.getLine(2)")
        assert indent == want, 'Enter after %r indented %r, not %r' % (line, indent, want)
    c.click('#editor-discard')
    c.click('#confirm-ok')
    c.wait(lambda: 'a comment' in c.cm_value(), 'Discard did not restore page.lua')

    c.click('#side-history')
    item = c.el('#history-list li.history-item', 'no history')
    ago = item.find_element(By.CSS_SELECTOR, '.ago')
    first = ago.text
    c.wait(lambda: ago.text != first, '"%s" never updated' % first, timeout=15)
    item.find_element(By.CSS_SELECTOR, '[data-diff]').click()
    hunk = c.el('#history-list .diff-hunk', 'the diff has no hunk header')
    assert hunk.text.startswith('@@ -') and not hunk.text.startswith('@ @@'), hunk.text

    c.click('#side-dryrun')
    c.click('#sample-paste')
    c.type('#paste-json', json.dumps(page_event('kept-1', 'kept')))
    c.click('#paste-add')
    c.el('#sample-list .sample[data-source="pasted"]', 'the pasted event is not among the samples')
    c.d.refresh()
    c.signed_in_as('admin')
    c.el('#sample-list .sample[data-source="pasted"]', 'the pasted sample was lost on reload')
    assert 'kept-1' in c.el('#sample-list').text
    kept = '#sample-list .sample[data-source="pasted"]:has([data-mid="kept-1"])'
    c.click(kept + ' .icon-btn')
    c.gone(kept)
    c.d.refresh()
    c.signed_in_as('admin')
    c.el('#sample-list .sample', 'no samples after the reload')
    assert 'kept-1' not in c.el('#sample-list').text, 'a removed sample came back'
    st, _ = env.api('PUT', '/v1/admin/blueprints/activecampaign/files',
                    {'files': {'page.lua': original}, 'message': 'cosmetics: back'}, token=s['admin'])
    assert st in (200, 201), st


def t_batches(c, s):
    """serve --batch: a backlog of identifies goes as one bulk import.  While
    the vendor holds it, Live Events says it is queued with its status
    requests so far; then each row carries a "batch N · M" badge, the detail
    gives the batch, its request, its status at the vendor and the event's
    own result (the vendor's words for a contact it could not import), and
    the badge narrows the list to the batch.  Its own serve and emulator."""
    main_env = c.env
    benv = harness.Env(serve_args=['--batch'], emulator_args=['--rate-limit', '0', '--import-delay-ms', '600000'])
    c.env = benv
    try:
        admin = benv.token('admin')
        st, it = benv.api('POST', '/v1/admin/integration-catalog/activecampaign/install',
                          {'name': 'Batches', 'variant': 'default', 'delivery_mode': 'server_side',
                           'config': {'api_url': benv.emu, 'api_key': 'emulator-api-token'}}, token=admin)
        assert st == 201, (st, it)
        iid = it['id']
        refused = 'refused.batch@example.com'
        benv.emulator('/_emulator/exclusions', {'account': 0, 'email': refused})
        emails = ['batch%02d@example.com' % i for i in range(11)] + [refused]
        mids = ['batch-%02d' % i for i in range(11)] + [XSS_IMG]
        send(benv, admin, iid, [{'type': 'identify', 'messageId': m, 'traits': {'email': e},
                                 'context': {'consent': CONSENT}} for m, e in zip(mids, emails)])
        c.sign_in_link('admin', subject='ops@example.com')
        c.go('#/live/' + iid)
        # the count of status requests goes up while it stays queued
        banner = c.wait(lambda: next((e for e in c.d.find_elements(By.CSS_SELECTOR, '#live-open-batches .alert')
                                      if 'queued at the vendor' in e.text and ' 0 status' not in e.text), None),
                        'Live Events does not say the batch is queued at the vendor with its status requests so far')
        assert 'status request' in banner.text and 'so far' in banner.text and '(12 events)' in banner.text, banner.text
        bid = int(banner.get_attribute('data-batch'))
        c.shoot('live-batch-queued', narrow=False)
        benv.emulator('/_emulator/imports/complete', {})
        c.gone('#live-open-batches .alert', 'the queued batch stayed listed after the import completed')
        badge = c.el('#live-rows tr[data-message-id="batch-03"] .badge-batch', 'the row has no batch badge')
        assert badge.text == 'batch %d · 12' % bid, badge.text
        c.open_row('batch-03', 'delivered')
        sec = c.el('#detail-batch', 'the detail has no Batch section')
        assert c.el('#detail-batch-id').text == str(bid)
        assert c.el('#detail-batch-size').text == '12'
        assert c.el('#detail-batch-request').text.endswith('/api/3/import/bulk_import'), c.el('#detail-batch-request').text
        assert c.el('#detail-batch-request').text.startswith('POST http://127.0.0.1:')
        status = c.el('#detail-batch-status').text
        assert status.startswith('done: answered after ') and 'status request' in status, status
        assert c.el('#detail-batch-result').text == 'delivered', c.el('#detail-batch-result').text
        c.shoot('live-batch-detail', narrow=False, scroll='#detail-batch')
        # the contact the vendor could not import: its own result, in the vendor's words
        c.open_row(XSS_IMG, 'dead_letter')
        result = c.text('#detail-batch-result', 'failed: ', 'the refused contact\'s result is not shown').text
        assert 'could not import the contact' in result, result
        assert c.js('return window.__xss') is None, 'event data ran as code'
        assert sec  # the section was found before the second row opened
        # the badge narrows the list to the batch (12 events) and back
        c.click('#detail-close')
        st, more = benv.api('POST', '/v1/integrations/%s/events' % iid,
                            {'type': 'identify', 'messageId': 'alone-1', 'traits': {'email': 'alone@example.com'},
                             'context': {'consent': CONSENT}}, token=admin)
        assert st == 202, (st, more)
        c.row('alone-1', 'delivered')
        assert not c.d.find_elements(By.CSS_SELECTOR, '#live-rows tr[data-message-id="alone-1"] .badge-batch'), \
            'an event sent alone has a batch badge'
        c.click('#live-rows tr[data-message-id="batch-05"] .badge-batch')
        c.text('#live-batch-filter', 'Batch %d' % bid, 'the batch filter is not shown')
        c.wait(lambda: len(c.d.find_elements(By.CSS_SELECTOR, '#live-rows tr[data-message-id]')) == 12,
               'the list was not narrowed to the batch\'s 12 events')
        assert c.js("return [...document.querySelectorAll('#live-rows .badge-batch')].every(b => b.dataset.batch === arguments[0])",
                    str(bid)), 'the batch filter shows another batch\'s events'
        assert not c.d.find_elements(By.CSS_SELECTOR, '#live-rows tr[data-message-id="alone-1"]'), 'an event sent alone is listed'
        summary = c.el('#live-batch-summary', 'no summary of the batch').text
        assert 'Batch %d' % bid in summary and '/api/3/import/bulk_import' in summary and 'done' in summary, summary
        results = c.el('#batch-results').text
        assert 'delivered 11' in results and 'dead letter 1' in results, results
        c.shoot('live-batch-filter')
        c.click('#live-batch-clear')
        c.row('alone-1', 'delivered')
        c.gone('#live-batch-summary:not([hidden])', 'the batch summary stayed after the filter was cleared')
        # the detail's button does the same, the list in the detail's place
        c.open_row('batch-07', 'delivered')
        c.click('#detail-batch-show')
        c.text('#live-batch-filter', 'Batch %d' % bid, 'the detail\'s button did not narrow the list to the batch')
        c.gone('#live-detail:not([hidden])', 'the detail stayed open over the batch\'s list')
        c.wait(lambda: len(c.d.find_elements(By.CSS_SELECTOR, '#live-rows tr[data-message-id]')) == 12,
               'the detail\'s button did not narrow the list to the batch\'s 12 events')
        c.click('#live-batch-clear')
        assert c.js('return window.__xss') is None, 'event data ran as code'
    finally:
        c.env = main_env
        benv.close()
        # the scenarios after this one use the shared serve
        c.sign_in_link('admin', subject='ops@example.com')


SCENARIOS = [
    ('quick setup: Integration Library to a 200 in Live Events', t_quick_setup),
    ('contact depth: lists, tags and maps from the Install form reach the emulator; shown and edited', t_depth),
    ('a custom event enabled from the integration page is delivered', t_webinar),
    ('blueprint editor: live dry-run, error marked, save, roll back', t_editor),
    ('hostile event data shows as text and runs nothing', t_hostile_event),
    ('health: a wrong key shows paused first, with why and since when; delivering after the fix; tiles say their window', t_health),
    ('install under a taken name: the name field is marked, scrolled to and focused', t_install_conflict),
    ('test events: every enabled event, custom ones by name with names seen offered', t_test_events),
    ('advice for the console: a custom event is enabled in the Events tab; the sidebar opens the integration viewed', t_advice),
    ('cosmetics: sidebar, hunk header, live "ago", indent, "off (not set)", pasted samples kept', t_cosmetics),
    ('batches: queued at the vendor, a batch badge per row, the batch in the detail, the badge filters to the batch', t_batches),
    # last: it deletes the integration the others use
    ('roles: replay for an admin; a viewer cannot install, edit or replay', t_roles),
]


def main():
    wanted = [a for a in sys.argv[1:] if not a.startswith('-')]
    plan = [(i + 1, n, f) for i, (n, f) in enumerate(SCENARIOS) if not wanted or any(w in f.__name__ for w in wanted)]
    print('1..%d' % len(plan), flush=True)
    missing = [p for p in (harness.CHROMIUM, harness.CHROMEDRIVER, harness.BIN, harness.EMULATOR) if not os.path.exists(p)]
    if missing or not HAVE_SELENIUM:
        why = 'python3-selenium is not installed' if not HAVE_SELENIUM else 'missing ' + ', '.join(missing)
        for n, name, _ in plan:
            print('ok %d - %s # SKIP %s' % (n, name, why))
        return 0
    if os.path.isdir(harness.SHOTS):
        for f in os.listdir(harness.SHOTS):
            if f.endswith('-failure.png'):
                os.remove(os.path.join(harness.SHOTS, f))
    env = harness.Env()
    driver = None
    failed = 0
    try:
        driver = harness.browser()
        driver.set_script_timeout(WAIT)
        c = Console(env, driver)
        state = {}
        for n, name, fn in plan:
            t0 = time.monotonic()
            try:
                fn(c, state)
                # a script error or a CSP refusal in the page fails the scenario
                bad = [e['message'] for e in driver.get_log('browser')
                       if e['level'] == 'SEVERE' and ('Uncaught' in e['message'] or 'Content Security Policy' in e['message'])]
                assert not bad, 'the page logged: %s' % bad[:3]
                print('ok %d - %s' % (n, name), flush=True)
            except Exception as e:
                failed += 1
                print('not ok %d - %s' % (n, name), flush=True)
                where = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == __file__]
                for f in where[-3:]:
                    print('#   %s:%d in %s: %s' % (os.path.basename(f.filename), f.lineno, f.name, f.line))
                msg = getattr(e, 'msg', None) or str(e)
                print('#   %s: %s' % (type(e).__name__, msg.strip().split('\n')[0][:600]))
                try:
                    shot = os.path.join(harness.SHOTS, fn.__name__ + '-failure.png')
                    driver.save_screenshot(shot)
                    print('#   screenshot: ' + os.path.relpath(shot, harness.REPO))
                    print('#   at: ' + driver.current_url)
                    for entry in driver.get_log('browser')[-8:]:
                        print('#   browser: %s %s' % (entry['level'], entry['message'][:300]))
                except Exception:
                    pass
                if isinstance(e, (AssertionError, TimeoutException)):
                    for line in env.serve_log().strip().split('\n')[-5:]:
                        print('#   serve: ' + line[:300])
                if fn is t_quick_setup:
                    # the rest needs the integration it installs
                    for n2, name2, _ in plan[plan.index((n, name, fn)) + 1:]:
                        print('not ok %d - %s # not run: quick setup failed' % (n2, name2))
                        failed += 1
                    break
            log('%s: %.1f s' % (fn.__name__, time.monotonic() - t0))
        if c.shots:
            print('# %d screenshots in %s' % (len(c.shots), os.path.relpath(harness.SHOTS, harness.REPO)))
    finally:
        if driver:
            driver.quit()
        env.close()
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
